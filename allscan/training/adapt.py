"""``allscan adapt``: fit a site profile on a lab's own labelled images.

This module fits a profile's field part (:mod:`allscan.training.adapt_cells` its cell part, on the
same rules). The base models stay frozen. For each model a logistic regression with strong L2
regularisation is fitted on its pooled features of the lab's fields (each field carries
its image's label; each image weighs the same whatever its number of fields). At
prediction the heads score every field and the usual aggregation rule (mean of the
top fields) and vote apply. The site's threshold and review band are chosen on
out-of-fold predictions (stratified k-fold over images), and the same out-of-fold
predictions give the figures the lab sees: ROC AUC with a bootstrap 95% interval,
sensitivity and specificity with Wilson 95% intervals (at a threshold chosen on those
same predictions, so slightly optimistic). The site's domain statistics (colour,
features, red-cell size) come from its images. The part records the domain options and the runtime
its features came from (an int8 OpenVINO member's features differ much from its Keras float32
ones): scoring with it takes them (:meth:`~allscan.domain.site.SiteProfile.settle`). Fitting one
part into a profile folder keeps the other part already there, where it was fitted on the models in
use (:func:`kept_parts`).
"""

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from allscan.models.calibration import weighted_mean
from allscan.training.dataset import CLASSES, sub_folders
from allscan.domain.fields import FieldSet
from allscan.domain.gaussian import fit_gaussian
from allscan.scoring.pipeline import Pipeline
from allscan.domain.reference import DomainChecks, DomainError, scale_tolerance
from allscan.domain.site import (CELLS, FIELDS, OPTIONS, PART_WORDS, PARTS, PROFILE_JSON, RUNTIME, CellPart,
                                 FieldPart, Head, SiteProfile, load_profile)
from allscan.scoring.vote import aggregate
from allscan.images import ImageError, decode_file, find_images
from allscan.models.manifest import EnsembleConfig, sha256_file
from allscan.paths import path_text
from allscan.training.operating_point import wilson_interval
from allscan.training.tune import tune_review_band, tune_threshold

T = TypeVar("T")

MIN_PER_CLASS = 5
RELIABLE_PER_CLASS = 20
"""Below this many images of a class the figures' intervals are wide: adapt warns."""
HEAD_C = 0.05
"""Inverse L2 strength of the heads on standardised features (few images, thousands of features)."""
FEATURE_COMPONENTS = 16
BOOTSTRAP = 2000


class LabelledSetError(Exception):
    """A labelled folder ``adapt`` cannot fit on: no images, too few in a class, or one image in both."""


@dataclass(frozen=True)
class Labelling:
    """What a labelled folder holds.

    Attributes:
        classes: Its class folders, label 0's then label 1's.
        noun: What its files are, for the messages.
        minimum: The fewest readable files per class that a fit accepts.
        command: The command that fits on it, for the messages.
    """

    classes: tuple[str, str]
    noun: str
    minimum: int
    command: str

    def folders(self) -> str:
        """Its class folders in words, label 1's first (``ALL/ and normal/``)."""
        return f"{self.classes[1]}/ and {self.classes[0]}/"


FIELD_LABELLING = Labelling(CLASSES, "images", MIN_PER_CLASS, "adapt")


@dataclass(frozen=True)
class LabelledSet:
    """The files ``adapt`` fits on, each file and each content once, listed before any model loads.

    Attributes:
        folder: The labelled folder.
        paths: Image files, label 0's class folder's (``normal/``) then label 1's (``ALL/``).
        labels: 1 or 0, one per path.
        skipped: ``(path, reason)`` for each file left out because its content is already listed.
        labelling: What the folder holds.
    """

    folder: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    skipped: tuple[tuple[Path, str], ...] = ()
    labelling: Labelling = FIELD_LABELLING

    def counts(self) -> np.ndarray:
        """Files per label: ``[normal, ALL]``."""
        return np.bincount(np.asarray(self.labels, dtype=int), minlength=2)


def list_labelled(folder: Path, labelling: Labelling = FIELD_LABELLING) -> LabelledSet:
    """Every image under ``folder/ALL`` and ``folder/normal`` (the class folders of ``labelling``), once,
    checked before any model loads.

    A file reached through several links is taken once; one reached through a link back up to
    the class folder or above it (a link loop, which would list the other class's images
    under this one) is not taken; a second file with the same content (sha256) as one already
    listed in its class is left out and listed in ``skipped``.

    Raises:
        LabelledSetError: No images, the same content in both classes (a labelling mistake that
            would teach the heads nothing and inflate the figures), or fewer than ``labelling.minimum``
            images in a class.
    """
    folder = Path(folder)
    taken: dict[str, tuple[Path, int]] = {}  # content (or real path, when unreadable here) -> first file, label
    paths, labels, skipped, clashes = [], [], [], []
    for label, name in enumerate(labelling.classes):
        root = folder / name
        for path in find_images([root]) if root.is_dir() else []:
            if _through_link_loop(path, root):
                continue
            key = _content_key(path)
            if key in taken:
                first, first_label = taken[key]
                if first_label != label:
                    clashes.append((first, path))
                elif first.resolve() != path.resolve():
                    skipped.append((path, f"same image as {first}"))
                continue
            taken[key] = (path, label)
            paths.append(path)
            labels.append(label)
    listed = LabelledSet(folder, tuple(paths), tuple(labels), tuple(skipped), labelling)
    _check_listed(listed, clashes)
    return listed


def _through_link_loop(path: Path, root: Path) -> bool:
    """Whether ``path`` lies behind a symlinked folder that leads to ``root`` or a folder above it."""
    top = root.resolve()
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink() and top.is_relative_to(current.resolve()):
            return True
    return False


def _content_key(path: Path) -> str:
    """The file's sha256; its real path when it cannot be read here (decoding will say why)."""
    try:
        return sha256_file(path)
    except OSError:
        return str(path.resolve())


def _check_listed(listed: LabelledSet, clashes: list[tuple[Path, Path]]) -> None:
    negative, positive = listed.labelling.classes
    if clashes:
        first, second = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise LabelledSetError(f"the same image is labelled both ways: {first} and {second}{more}; "
                               "keep each image in one class folder")
    try:
        if not listed.paths:
            raise LabelledSetError(f"no {listed.labelling.noun} under {listed.folder / positive} or "
                                   f"{listed.folder / negative}")
        check_readable(listed.counts(), list(listed.skipped), listed.labelling)
    except LabelledSetError as err:
        raise LabelledSetError(f"{err}{_absent_class_folders(listed.folder, listed.labelling)}") from None


def _absent_class_folders(folder: Path, labelling: Labelling) -> str:
    """For a refusal: the class folders that are not there and the sub-folders that are (a lab's ``all/`` or
    ``Normal/`` is not ``ALL/`` or ``normal/``), or an empty string when every class folder is there."""
    absent = [(folder / name, "not a folder" if (folder / name).exists() else "no such folder")
              for name in labelling.classes if not (folder / name).is_dir()]
    if not absent or not folder.is_dir():
        return ""
    return (f" ({'; '.join(f'{path_text(path)}: {why}' for path, why in absent)}; {path_text(folder)} holds "
            f"{', '.join(sub_folders(folder)) or 'no sub-folder'}; the class folders' names are case-sensitive)")


def check_counts(counts: np.ndarray, labelling: Labelling = FIELD_LABELLING) -> None:
    """Refuse fewer than ``labelling.minimum`` files in a class (``counts``: ``[normal, ALL]``)."""
    if counts.min() < labelling.minimum:
        negative, positive = labelling.classes
        raise LabelledSetError(f"{labelling.command} needs at least {labelling.minimum} readable {labelling.noun} "
                               f"in each of {labelling.folders()}; found {counts[1]} {positive} and "
                               f"{counts[0]} {negative}")


def check_readable(counts: np.ndarray, skipped: list[tuple[Path, str]], labelling: Labelling = FIELD_LABELLING
                   ) -> None:
    """Refuse fewer than ``labelling.minimum`` readable files in a class (``counts``: per label) once they are
    read, naming the first of the ``skipped`` files (``(path, reason)``) and why: the one to fix or replace."""
    try:
        check_counts(counts, labelling)
    except LabelledSetError as err:
        if not skipped:
            raise
        path, reason = skipped[0]
        raise LabelledSetError(f"{err} ({len(skipped)} left out; first {path_text(path)}: {reason})") from None


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int
    fields: FieldSet
    features: dict[str, np.ndarray]


@dataclass(frozen=True)
class AdaptResult:
    """What ``adapt`` fitted and measured, for one part of a site profile.

    Attributes:
        part: The fitted part.
        figures: Cross-validated figures with 95% intervals.
        skipped: ``(path, reason)`` for each unreadable image left out.
        warnings: Plain-language cautions (too few images).
        seconds: Wall time.
    """

    part: FieldPart | CellPart
    figures: dict
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def collect(pipeline: Pipeline, labelled: LabelledSet | Path, batch_size: int = 16
            ) -> tuple[list[LabelledImage], list[tuple[Path, str]]]:
    """Fields and pooled features of every readable image of ``labelled`` (or of :func:`list_labelled` of
    a folder) that holds cells, and ``(path, reason)`` for each image left out.

    An image none of whose fields holds cells (a blank frame, a slide's edge) is left out: it is no example of
    either class, and the site's domain limits, set by the farthest image fitted, would widen to take it in
    (one white frame among 13 images let colour-shifted ALL fields through as in domain and normal).
    """
    labelled = labelled if isinstance(labelled, LabelledSet) else list_labelled(labelled)
    images, skipped, prepared = [], list(labelled.skipped), []
    for path, label in zip(labelled.paths, labelled.labels):
        try:
            fields = pipeline.fields(decode_file(path).rgb)
        except ImageError as err:
            skipped.append((path, str(err)))
            continue
        if fields.background_only:
            skipped.append((path, "no field holds cells (mostly background): not an example of either class"))
        else:
            prepared.append((path, int(label), fields))
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        outputs = pipeline.field_outputs([fs for _, _, fs in chunk], batch_size)
        images += [LabelledImage(p, y, fs, feats) for (p, y, fs), (_, feats) in zip(chunk, outputs)]
    return images, skipped


def fit_head(x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, c: float = HEAD_C) -> Head:
    """An L2 logistic regression on standardised features ``x`` ``(n, d)``, both classes weighing the same."""
    from sklearn.linear_model import LogisticRegression

    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / std, labels, sample_weight=weights)
    return Head(mean, std, model.coef_[0], float(model.intercept_[0]))


def fit_heads(images: list[LabelledImage], c: float = HEAD_C) -> dict[str, Head]:
    """One head per model on field features, each image weighing the same."""
    labels = np.concatenate([np.full(im.fields.tiles, im.label) for im in images])
    weights = np.concatenate([np.full(im.fields.tiles, 1.0 / im.fields.tiles) for im in images])
    return {name: fit_head(np.concatenate([im.features[name] for im in images]), labels, weights, c)
            for name in images[0].features}


def image_probabilities(heads: dict[str, Head], images: list[LabelledImage]) -> np.ndarray:
    """Each image's site p(ALL): heads on its fields, the aggregation rule, equal-weight vote."""
    weights = {name: 1.0 / len(heads) for name in heads}
    return np.asarray([weighted_mean(aggregate({n: h.probabilities(im.features[n]) for n, h in heads.items()},
                                               weights), weights) for im in images])


def fold_count(labels: np.ndarray) -> int:
    """Folds of the cross-validation: 5, or the size of the smaller class when it is below 5."""
    return min(5, int(np.bincount(labels, minlength=2).min()))


def out_of_fold(images: list[LabelledImage], c: float = HEAD_C, seed: int = 0) -> np.ndarray:
    """Out-of-fold site p(ALL) per image (:func:`cross_validated`)."""
    return cross_validated(np.array([im.label for im in images]),
                           lambda train: fit_heads([images[i] for i in train], c),
                           lambda heads, test: image_probabilities(heads, [images[i] for i in test]), seed)


def cross_validated(labels: np.ndarray, fit: Callable[[np.ndarray], T],
                    predict: Callable[[T, np.ndarray], np.ndarray], seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions by stratified k-fold (k = min(5, smaller class)): ``fit`` on each fold's
    training indices, ``predict`` its test indices with what it fitted."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.empty(len(labels))
    folds = StratifiedKFold(fold_count(labels), shuffle=True, random_state=seed)
    for train, test in folds.split(np.zeros(len(labels)), labels):
        oof[test] = predict(fit(train), test)
    return oof


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, rounds: int = BOOTSTRAP, seed: int = 0
                  ) -> tuple[float, float, float]:
    """ROC AUC and its percentile-bootstrap 95% interval, resampling images within each class (with a
    handful of images, resampling them all together would often leave one class out)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = []
    for _ in range(rounds):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values.append(roc_auc_score(labels[idx], scores[idx]))
    return float(roc_auc_score(labels, scores)), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def figures(labels: np.ndarray, oof: np.ndarray, threshold: float, labelling: Labelling = FIELD_LABELLING) -> dict:
    """Cross-validated AUC, sensitivity and specificity with 95% intervals (``n_ALL`` and ``n_normal``
    count the files of each of ``labelling``'s classes)."""
    auc, auc_low, auc_high = bootstrap_auc(labels, oof)
    called = oof >= threshold
    tp, pos = int((called & (labels == 1)).sum()), int((labels == 1).sum())
    tn, neg = int((~called & (labels == 0)).sum()), int((labels == 0).sum())
    negative, positive = labelling.classes
    return {
        "method": f"stratified {fold_count(labels)}-fold cross-validation over {labelling.noun}",
        f"n_{positive}": pos, f"n_{negative}": neg,
        "roc_auc": round(auc, 4), "roc_auc_95ci": [round(auc_low, 4), round(auc_high, 4)],
        "sensitivity": round(tp / pos, 4), "sensitivity_95ci": [round(v, 4) for v in wilson_interval(tp, pos)],
        "specificity": round(tn / neg, 4), "specificity_95ci": [round(v, 4) for v in wilson_interval(tn, neg)],
        "threshold": threshold,
    }


def few_warning(counts: np.ndarray, reliable: int, noun: str) -> list[str]:
    """The caution for a smaller class of fewer than ``reliable`` files (``counts``: per label), if it is."""
    if counts.min() >= reliable:
        return []
    return [f"only {counts.min()} {noun} in the smaller class: the figures' intervals are wide; "
            f"{reliable} or more per class give figures worth trusting"]


def site_checks(images: list[LabelledImage], feature_models: tuple[str, ...]) -> DomainChecks:
    """The site's own domain: its colour, its fields' features, its red-cell size."""
    colours = np.stack([im.fields.colour for im in images])
    features = np.concatenate([np.concatenate([im.features[n] for n in feature_models], axis=1) for im in images])
    groups = np.concatenate([np.full(im.fields.tiles, i) for i, im in enumerate(images)])
    diameters = [im.fields.diameter for im in images if im.fields.diameter is not None]
    return DomainChecks(
        float(np.median(diameters)) if diameters else 0.0,
        scale_tolerance(np.array(diameters)),
        fit_gaussian(colours, quantile=1.0, margin=1.25),
        fit_gaussian(features, components=FEATURE_COMPONENTS, groups=groups, quantile=1.0, margin=1.25),
    )


def adapt(pipeline: Pipeline, labelled: LabelledSet | Path, source: str = "") -> AdaptResult:
    """Fit a site profile on ``labelled`` (a :class:`LabelledSet`, or a folder holding ``ALL/`` and
    ``normal/``; see the module docstring).

    Raises:
        DomainError: Models without a domain reference.
        LabelledSetError: No images, one image in both classes, or too few readable images of a class.
    """
    started = time.monotonic()
    if pipeline.reference is None:
        raise DomainError("these models came without a domain reference; adapt needs one")
    labelled = labelled if isinstance(labelled, LabelledSet) else list_labelled(labelled)
    images, skipped = collect(pipeline, labelled)
    labels = np.array([im.label for im in images], dtype=int)
    counts = np.bincount(labels, minlength=2)
    check_readable(counts, skipped)
    warnings = few_warning(counts, RELIABLE_PER_CLASS, "images")
    oof = out_of_fold(images)
    threshold = tune_threshold(labels, oof)
    band = tune_review_band(labels, oof, threshold)
    heads = fit_heads(images)
    names = tuple(heads)
    meta = {
        "source": source or str(labelled.folder),
        "images": {"ALL": int(counts[1]), "normal": int(counts[0]), "skipped": len(skipped)},
        OPTIONS: pipeline.options.key(),
        RUNTIME: pipeline.ensemble.runtime,
        "cross_validated": figures(labels, oof, threshold),
        "warnings": warnings,
    }
    part = FieldPart(pipeline.ensemble.manifest.digest, heads,
                     EnsembleConfig({n: 1.0 / len(names) for n in names}, threshold, band),
                     site_checks(images, pipeline.reference.feature_models), meta)
    return AdaptResult(part, meta["cross_validated"], skipped, warnings, time.monotonic() - started)


def kept_parts(folder: Path, refitted: Collection[str], digests: dict[str, str | None]
               ) -> tuple[dict[str, FieldPart | CellPart], list[str]]:
    """The parts of the profile already in ``folder`` that a fit of the ``refitted`` parts (by name) leaves in
    place: those it does not refit, where they were fitted on the models in use (``digests``: their digest by
    part name, None where there are none).

    Returns:
        The parts kept, by name, and a plain-language line for each part (or profile) that cannot be kept.
    """
    folder = Path(folder)
    if set(PARTS) <= set(refitted) or not (folder / PROFILE_JSON).exists():
        return {}, []
    try:
        profile = load_profile(folder)
    except DomainError as err:
        return {}, [f"the profile already in {path_text(folder)} cannot be read, so none of it is kept ({err})"]
    kept, dropped = {}, []
    for name, part in profile.parts().items():
        if name in refitted:
            continue
        if part.models_digest == digests.get(name):
            kept[name] = part
        else:
            dropped.append(f"the {PART_WORDS[name]} part already in {path_text(folder)} was fitted on other models "
                           f"({part.models_digest}), so it is not kept")
    return kept, dropped


def site_profile(fields: AdaptResult | None = None, cells: AdaptResult | None = None,
                 kept: dict[str, FieldPart | CellPart] | None = None) -> SiteProfile:
    """A profile of the parts fitted (a field part, a cell part or both) and of the ``kept`` parts (by name,
    from :func:`kept_parts`) for those not fitted, stamped with the time."""
    kept = kept or {}
    return SiteProfile(fields.part if fields is not None else kept.get(FIELDS),
                       cells.part if cells is not None else kept.get(CELLS),
                       datetime.now().astimezone().isoformat(timespec="seconds"))
