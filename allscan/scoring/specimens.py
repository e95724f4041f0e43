"""The specimen rule: from the verdicts of a specimen's fields (a patient's slide) to the specimen's.

A specimen is ALL when at least ``min_all`` of its fields are called ALL, or when the mean p(ALL)
of its ``top`` most suspicious fields reaches ``threshold`` (blasts need not lie in every field,
so the most suspicious fields speak for the slide, as the vote's field aggregation does for an
image). It is flagged for review when that mean lies in ``review_band``, when fewer than
``min_all`` but some fields are ALL, or when any field is out of domain or could not be scored. Copies of
one content (a field saved under two names) count once.

The parameters are fitted on the validation split (``benchmarks/specimen_rule.py``) and ship
beside the models as ``specimen_rule.json``; they do not change any image's score, so they are
not part of the results digest.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from allscan.fileio import atomic_write_text
from allscan.models.manifest import ManifestError
from allscan.paths import path_text
from allscan.results.types import VERDICT_ALL, VERDICT_ERROR, VERDICT_NORMAL, ImageResult, SpecimenSummary

SPECIMEN_RULE_JSON = "specimen_rule.json"


@dataclass(frozen=True)
class SpecimenRule:
    """How a specimen's fields decide its verdict (see the module docstring)."""

    min_all: int = 1
    top: int = 3
    threshold: float = 0.5
    review_band: tuple[float, float] = (0.05, 0.95)
    fitted_on: str = ""

    def __post_init__(self):
        low, high = self.review_band
        if not (self.min_all >= 1 and self.top >= 1 and 0 < self.threshold < 1 and 0 <= low <= high <= 1):
            raise ManifestError(f"specimen rule out of range: {asdict(self)}")

    def judge(self, specimen: str, results: Iterable[ImageResult], notes: tuple[str, ...] = (),
              unscored: int = 0) -> SpecimenSummary:
        """The summary and verdict of one specimen from its images' results; ``unscored`` more of its images have
        no result yet (a run interrupted before them): counted among its images, and flagged."""
        results = list(results)
        contents: dict[str, ImageResult] = {}  # by content; by path where a result has no hash
        for r in results:
            if r.score is not None:
                contents.setdefault(r.sha256 or str(r.path), r)  # a field saved twice is one field, not two
        scored = list(contents.values())
        copies = sum(r.score is not None for r in results) - len(scored)
        errors = sum(r.score is None for r in results)
        out = sum(r.score.out_of_domain for r in scored)
        n_all = sum(r.score.verdict == VERDICT_ALL for r in scored)
        remarks = list(notes)
        if unscored:  # a verdict from some of its images only must not read as the specimen's
            remarks.append(f"{unscored} image(s) not scored yet: the run was interrupted; rerun it to finish")
        if not scored:
            failed = ["no image could be scored"] if errors or not unscored else []
            return SpecimenSummary(specimen, VERDICT_ERROR, True, len(results) + unscored, 0, 0, 0, 0, 0, errors,
                                   None, "", None, "; ".join(remarks + failed))
        p = np.array([r.score.p_all for r in scored])
        best = int(np.argmax(p))
        score = float(np.mean(np.sort(p)[::-1][: self.top]))
        verdict = VERDICT_ALL if n_all >= self.min_all or score >= self.threshold else VERDICT_NORMAL
        low, high = self.review_band
        if low <= score < high:
            remarks.append(f"rule score {score:.3f} near the threshold")
        few = 0 < n_all < self.min_all  # one stray field decides too little, whichever way the rule went
        if few:
            remarks.append(f"{n_all} image(s) called ALL, fewer than the rule's {self.min_all}")
        if out:
            remarks.append(f"{out} image(s) out of domain")
        if errors:
            remarks.append(f"{errors} image(s) could not be scored")
        if copies:
            remarks.append(f"{copies} copy(ies) of an image counted once")
        review = bool(low <= score < high or few or out or errors or unscored)
        return SpecimenSummary(
            specimen, verdict, review, len(results) + unscored, len(scored), n_all, len(scored) - n_all,
            sum(r.score.review for r in scored), out, errors, float(p[best]), path_text(scored[best].path), score,
            "; ".join(remarks),
        )

    def save(self, models_dir: Path) -> None:
        payload = asdict(self) | {"review_band": list(self.review_band)}
        atomic_write_text(Path(models_dir) / SPECIMEN_RULE_JSON, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, models_dir: Path) -> "SpecimenRule":
        """The rule shipped in ``models_dir``, or the default rule when none is.

        Raises:
            ManifestError: A rule file that cannot be read or is out of range.
        """
        path = Path(models_dir) / SPECIMEN_RULE_JSON
        if not path.is_file():
            return cls()
        try:
            meta = json.loads(path.read_text())
            return cls(int(meta["min_all"]), int(meta["top"]), float(meta["threshold"]),
                       (float(meta["review_band"][0]), float(meta["review_band"][1])), str(meta.get("fitted_on", "")))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ManifestError(f"malformed specimen rule {path}: {err}") from None


def summarise(results: Iterable[ImageResult], rule: SpecimenRule,
              notes: dict[str, tuple[str, ...]] | None = None,
              unscored: dict[str, int] | None = None) -> list[SpecimenSummary]:
    """One summary per specimen of ``results`` (grouped by their ``specimen``) or of ``unscored`` (how many of a
    specimen's images have no result yet), sorted by id."""
    groups: dict[str, list[ImageResult]] = {name: [] for name in unscored or {}}
    for result in results:
        groups.setdefault(result.specimen, []).append(result)
    notes, unscored = notes or {}, unscored or {}
    return [rule.judge(name, groups[name], notes.get(name, ()), unscored.get(name, 0)) for name in sorted(groups)]
