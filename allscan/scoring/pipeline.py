"""Images in, scores out: fields for every image, the models over all fields, the aggregation rule,
an optional site profile's heads, the vote and the out-of-domain guard.

This is the one path from pixels to a :class:`~allscan.results.types.Score`, used by predict, watch,
explain, the API, the Ray actors, evaluate, tune and adapt.
"""

import hashlib
import json
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allscan.domain.fields import METHOD_REVISION, DomainOptions, FieldMaker, FieldSet
from allscan.domain.guard import assess
from allscan.domain.reference import DomainError, DomainReference
from allscan.domain.site import CELLS, FIELDS, SiteProfile, load_profile, profile_name
from allscan.models.manifest import load_manifest
from allscan.models.runtime import check_runtime, choose_runtime
from allscan.results.types import DomainInfo, Score
from allscan.scoring.cells import CELLS_DIR, CellClassifier
from allscan.scoring.specimens import SpecimenRule
from allscan.scoring.vote import aggregate, combine, top_fields

if TYPE_CHECKING:
    from allscan.models.ensemble import Ensemble


class Pipeline:
    """An ensemble with the domain reference shipped beside it, the run's options and, optionally, a
    site profile (loaded from ``site_dir``; ``site_origin`` says where that was named, for the messages).

    Raises:
        ManifestError: The domain reference is tampered or was fitted for other models, or the site
            profile was fitted on other models or other cell models, or holds cell heads for models
            without a cell classifier (DomainError).
    """

    def __init__(self, ensemble: "Ensemble", options: DomainOptions = DomainOptions(), site: SiteProfile | None = None,
                 site_dir: Path | None = None, cells: CellClassifier | None = None, site_origin: str = ""):
        self.ensemble = ensemble
        self.reference: DomainReference | None = DomainReference.for_models(ensemble.models_dir, ensemble.manifest)
        self.options = options
        self.site = site
        self.site_fields = site.fields if site is not None else None
        self.site_dir = site_dir
        try:
            if site is not None:
                site.check_models(ensemble.manifest.digest)
            self.cells = _site_cells(cells, site) if options.cells else None
        except DomainError as err:
            name = profile_name(site_dir, site_origin) if site_dir is not None else "site profile"
            raise DomainError(f"{name}: {err}") from None
        self.maker = FieldMaker(self.reference, ensemble.input_sizes, options, cells=self.cells is not None)
        self.specimen_rule = SpecimenRule.load(ensemble.models_dir)

    @property
    def digest(self) -> str:
        """Identifies models, site profile, options and the per-image method's revision together: results are
        stored under it."""
        key = {"models": self.ensemble.digest, "site": self.site.digest if self.site else None,
               "options": self.options.key(), "method": METHOD_REVISION}
        if self.cells is not None:  # the cell models join the key only where cells are judged
            key["cells"] = self.cells.digest
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, models_dir: Path, site_dir: Path | None = None,
             options: DomainOptions = DomainOptions(), load_models: bool = True,
             site_origin: str = "", runtime: str = "auto", cells_runtime: str | None = None,
             given: Collection[str] = ()) -> "Pipeline":
        """Load the site profile in ``site_dir``, if given, then the models in ``models_dir``
        (``load_models`` False: check the models now, load them on first use; see :meth:`Ensemble.load`).

        The profile is read first: a bad one is refused in a second, not after the models load.
        ``site_origin`` says where its folder was named (e.g. ``$ALLSCAN_SITE``), for the messages;
        ``runtime`` runs the models (``auto``, ``openvino`` or ``keras``; see :meth:`Ensemble.load`), and the
        cell classifier too unless ``cells_runtime`` says otherwise. With a site profile, the options of
        ``options`` not named in ``given`` and an ``auto`` runtime are the ones it was fitted with
        (:meth:`~allscan.domain.site.SiteProfile.settle`).

        Raises:
            ManifestError: Unusable models, or a site profile that is corrupt, altered, out of range, was
                fitted on other models, or with other options or another runtime than ``given`` (a DomainError).
            ValueError: An unknown runtime.
        """
        runtimes = {FIELDS: runtime, CELLS: cells_runtime or runtime}
        for asked in runtimes.values():
            check_runtime(asked)
        site = load_profile(Path(site_dir), site_origin) if site_dir is not None else None
        if site is not None:
            name = profile_name(Path(site_dir), site_origin)
            options, runtimes = settle(site, Path(models_dir), options, given, runtimes, name)
        from allscan.models.ensemble import Ensemble  # TensorFlow loads with the models, not with this module

        ensemble = Ensemble.load(Path(models_dir), load_models=load_models, runtime=runtimes[FIELDS])
        cells = CellClassifier.load(Path(models_dir), runtimes[CELLS], load_models) if options.cells else None
        return cls(ensemble, options, site, Path(site_dir) if site_dir is not None else None, cells, site_origin)

    def describe(self) -> dict:
        """Run metadata: options, the reference red-cell size, and the site profile if any."""
        info: dict = {"options": self.options.key()}
        if self.reference is not None:
            info["reference_rbc_diameter_px"] = round(self.reference.checks.rbc_diameter, 2)
            info["reference"] = self.ensemble.manifest.domain
        if self.site is not None:
            info["site"] = self.site.describe()
        return info

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return self.ensemble.input_sizes

    def fields(self, rgb: np.ndarray) -> FieldSet:
        """The image's fields (thread-safe: runs on the decode threads)."""
        return self.maker(rgb)

    @property
    def config(self):
        """The :class:`~allscan.models.manifest.EnsembleConfig` in force: the site profile's, else the models'."""
        return self.site_fields.ensemble if self.site_fields is not None else self.ensemble.manifest.ensemble

    def field_outputs(self, fieldsets: list[FieldSet], batch_size: int
                      ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Per image: each model's field probabilities ``(n,)`` and pooled features ``(n, d)``.

        With a site profile the probabilities are the site heads' answers.
        """
        counts = [fs.tiles for fs in fieldsets]
        stacked = {s: np.concatenate([fs.inputs[s] for fs in fieldsets]) for s in self.input_sizes}
        total = sum(counts)
        probs: dict[str, list[np.ndarray]] = {}
        feats: dict[str, list[np.ndarray]] = {}
        for start in range(0, total, batch_size):
            chunk = {s: x[start:start + batch_size] for s, x in stacked.items()}
            p, f = self.ensemble.outputs(chunk)
            for name in p:
                probs.setdefault(name, []).append(p[name])
                feats.setdefault(name, []).append(f[name])
        all_p = {n: np.concatenate(v) for n, v in probs.items()}
        all_f = {n: np.concatenate(v) for n, v in feats.items()}
        if self.site_fields is not None:
            all_p = self.site_fields.probabilities(all_f)
        bounds = np.cumsum([0, *counts])
        return [({n: v[a:b] for n, v in all_p.items()}, {n: v[a:b] for n, v in all_f.items()})
                for a, b in zip(bounds[:-1], bounds[1:])]

    def member_probabilities(self, fieldsets: list[FieldSet], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Each model's uncalibrated p(ALL) per image ``{model: (n_images,)}``, its fields aggregated by
        the vote's rule: what calibration and the operating point are fitted on."""
        config = self.config
        per_image = [aggregate(probs, config.weights) for probs, _ in self.field_outputs(fieldsets, batch_size)]
        return {name: np.array([p[name] for p in per_image]) for name in (per_image[0] if per_image else {})}

    def score(self, fieldsets: list[FieldSet], batch_size: int = 16) -> list[Score]:
        """Scores for a list of images' field sets, the models run over all their fields in batches."""
        config = self.config
        scores = []
        for fs, (probs, feats) in zip(fieldsets, self.field_outputs(fieldsets, batch_size)):
            score = combine(aggregate(probs, config.weights), config)
            scores.append(self._judge(score, fs, feats, top_fields(probs, config.weights)))
        return self._with_cells(scores, fieldsets)

    def _with_cells(self, scores: list[Score], fieldsets: list[FieldSet]) -> list[Score]:
        """The scores with their images' cells judged, flagged where the cells disagree with the verdict."""
        looked = [i for i, fs in enumerate(fieldsets) if fs.cells is not None]
        if self.cells is None or not looked:
            return scores
        judged = dict(zip(looked, self.cells.judge([fieldsets[i].cells for i in looked])))
        out = []
        for i, score in enumerate(scores):
            if i in judged:
                score = replace(score, cells=judged[i])
                reason = self.cells.rule.disagreement(score)
                if reason:
                    notes = "; ".join(n for n in (reason, score.domain.notes) if n)  # _judge gave every score a domain
                    score = replace(score, review=True, domain=replace(score.domain, notes=notes))
            out.append(score)
        return out

    def _judge(self, score: Score, fs: FieldSet, feats: dict[str, np.ndarray], deciding: np.ndarray) -> Score:
        """``score`` with the guard's answer on ``fs``, whose fields ``deciding`` made its verdict."""
        notes = list(fs.notes)
        if self.reference is None:
            return replace(score, domain=DomainInfo(fs.scale, fs.tiles, "", None, "; ".join(notes)))
        checks = self.site_fields.checks if self.site_fields is not None else self.reference.checks
        features = np.concatenate([feats[n] for n in self.reference.feature_models], axis=1)
        verdict = assess(checks, fs.diameter, fs.colour, features, fs.background_only, fs.long_side, deciding)
        if verdict.reasons:
            notes = [f"out of domain: {'; '.join(verdict.reasons)}", *notes]
        info = DomainInfo(None if fs.scale is None else round(fs.scale, 4), fs.tiles, verdict.domain,
                          verdict.score, "; ".join(notes))
        return replace(score, review=score.review or verdict.domain == "out", domain=info)


def settle(site: SiteProfile, models_dir: Path, options: DomainOptions, given: Collection[str],
           runtimes: dict[str, str], name: str = "site profile") -> tuple[DomainOptions, dict[str, str]]:
    """The domain options and runtimes (by part name) to score ``models_dir`` with ``site`` (``name`` names it in
    the messages): :meth:`~allscan.domain.site.SiteProfile.settle`, before any model loads.

    Raises:
        DomainError: An option given or a runtime asked for that is not the one ``site`` was fitted with.
        ManifestError: No manifest to say what ``auto`` picks for a part that records no runtime, where another
            is asked for.
    """
    def auto(part: str) -> str:
        return choose_runtime("auto", load_manifest(models_dir / CELLS_DIR if part == CELLS else models_dir))

    try:
        return site.settle(options, given, runtimes, auto)
    except DomainError as err:
        raise DomainError(f"{name}: {err}") from None


def _site_cells(cells: CellClassifier | None, site: SiteProfile | None) -> CellClassifier | None:
    """The cell classifier, judging by the site profile's cell heads when it holds them.

    Raises:
        DomainError: The profile holds cell heads and the models no cell classifier, or other cell models.
    """
    if site is None or site.cells is None:
        return cells
    if cells is None:
        raise DomainError("holds cell heads, but these models come without a cell classifier; "
                          "use --no-cells, or a profile fitted without --cells")
    return cells.adapted(site.cells)


def as_pipeline(scoring: "Ensemble | Pipeline") -> Pipeline:
    """A bare ensemble becomes a pipeline with default options, no site profile and the cell classifier
    shipped beside it, if any."""
    if isinstance(scoring, Pipeline):
        return scoring
    return Pipeline(scoring, cells=CellClassifier.load(scoring.models_dir, scoring.runtime))
