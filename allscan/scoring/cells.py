"""The cell classifier: p(blast) for each white cell's crop, and the rule that flags an image whose
cells disagree with its verdict.

It is a second, smaller ensemble shipped in ``models/cells/`` in the same format as the field
models (manifest with sha256, input size, calibration and threshold; OpenVINO files when converted),
loaded and run by the same code (:class:`~allscan.models.ensemble.Ensemble`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.domain.cells import CellCrops
from allscan.images import resize
from allscan.domain.site import CellPart
from allscan.models.calibration import weighted_mean
from allscan.models.manifest import ManifestError
from allscan.results.types import VERDICT_NORMAL, CellFindings, CellResult, Score

CELLS_DIR = "cells"
"""The cell classifier's folder inside a models folder."""
RULE_NAME = "cell_rule.json"


@dataclass(frozen=True)
class CellRule:
    """When an image's cells disagree with its verdict (fixed on the validation split).

    Attributes:
        min_blasts: A normal image holding at least this many cells at or above ``confident`` p(blast)
            is flagged for review.
        confident: See ``min_blasts``.
        fitted_on: What it was chosen on, in words.
    """

    min_blasts: int = 2
    confident: float = 0.9
    fitted_on: str = ""

    @classmethod
    def load(cls, folder: Path) -> "CellRule":
        """The rule shipped in ``folder``, or the default when none was.

        Raises:
            ManifestError: An unreadable or malformed rule file.
        """
        path = Path(folder) / RULE_NAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rule = cls(int(data["min_blasts"]), float(data["confident"]), str(data.get("fitted_on", "")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ManifestError(f"cannot read the cell rule {path}: {err}") from None
        if rule.min_blasts < 1 or not 0 < rule.confident <= 1:
            raise ManifestError(f"cell rule {path}: min_blasts must be at least 1 and confident in (0, 1]")
        return rule

    def disagreement(self, score: Score) -> str:
        """Why the cells disagree with ``score``'s verdict, or an empty string."""
        cells = score.cells
        if cells is None or score.verdict != VERDICT_NORMAL:
            return ""
        confident = sum(c.p_blast >= self.confident for c in cells.cells)
        if confident >= self.min_blasts:
            return (f"cells disagree: {confident} cells look like blasts (p ≥ {self.confident:g}) in an image"
                    " called normal")
        return ""


class CellClassifier:
    """The cell models of a models folder, their calibrated vote, threshold and review rule; or, adapted to
    a site, the site profile's cell heads on the members' features and its threshold."""

    def __init__(self, ensemble, rule: CellRule, site: CellPart | None = None):
        self.ensemble = ensemble
        self.rule = rule
        self.site = site

    @classmethod
    def load(cls, models_dir: Path, runtime: str = "auto", load_models: bool = True) -> "CellClassifier | None":
        """The classifier in ``models_dir/cells``, or None when the models came without one.

        Raises:
            ManifestError: A cell classifier that is there but unusable (see
                :meth:`~allscan.models.ensemble.Ensemble.load`).
        """
        folder = Path(models_dir) / CELLS_DIR
        if not folder.is_dir():
            return None
        from allscan.models.ensemble import Ensemble  # TensorFlow loads with the models, not with this module

        return cls(Ensemble.load(folder, load_models=load_models, runtime=runtime), CellRule.load(folder))

    def adapted(self, site: CellPart) -> "CellClassifier":
        """This classifier judging by a site profile's cell heads and threshold.

        Raises:
            DomainError: The heads were fitted on other cell models.
        """
        site.check_models(self.ensemble.manifest.digest)
        return CellClassifier(self.ensemble, self.rule, site)

    @property
    def digest(self) -> str:
        return self.ensemble.digest

    @property
    def threshold(self) -> float:
        return self.site.threshold if self.site is not None else self.ensemble.manifest.ensemble.threshold

    def probabilities(self, crops: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                               dict[str, np.ndarray]]:
        """Calibrated p(blast) ``(n,)``, each member's calibrated p ``{name: (n,)}`` and pooled features
        ``{name: (n, d)}`` for crops ``(n, s, s, 3)`` uint8 (resized to each member's input size); adapted to a
        site, p(blast) and each member's p are its heads' answers."""
        config = self.ensemble.manifest.ensemble
        probs: dict[str, list] = {}
        feats: dict[str, list] = {}
        for start in range(0, len(crops), batch_size):
            chunk = crops[start:start + batch_size]
            p, f = self.ensemble.outputs({size: np.stack([resize(crop, size) for crop in chunk])
                                          for size in self.ensemble.input_sizes})
            for name in p:
                probs.setdefault(name, []).append(p[name])
                feats.setdefault(name, []).append(f[name])
        members = {n: config.calibration.member(n, np.concatenate(v)) for n, v in probs.items()}
        features = {n: np.concatenate(v) for n, v in feats.items()}
        if not members:
            return np.zeros(0), {}, {}
        if self.site is not None:
            return *self.site.probabilities(features), features
        p_blast = np.asarray(config.calibration.ensemble.apply(weighted_mean(members, config.weights)), dtype=float)
        return p_blast.reshape(-1), members, features

    def judge(self, found: list[CellCrops]) -> list[CellFindings]:
        """Each image's cells judged, all images' crops run through the models together."""
        counts = [len(f) for f in found]
        crops = [f.crops for f in found if len(f)]
        if not crops:
            return [CellFindings((), self.threshold) for _ in found]
        p_blast, members, _ = self.probabilities(np.concatenate(crops))
        bounds = np.cumsum([0, *counts])
        findings = []
        for f, a in zip(found, bounds[:-1]):
            results = tuple(
                CellResult(i + 1, c.x, c.y, c.x0, c.y0, c.x1, c.y1, c.nucleus_px, float(p_blast[a + i]),
                           {n: float(v[a + i]) for n, v in members.items()})
                for i, c in enumerate(f.cells))
            findings.append(CellFindings(results, self.threshold))
        return findings

