"""``allscan adapt``: fit a site profile on a lab's own labelled images.

The base models stay frozen. For each model a logistic regression with strong L2
regularisation is fitted on its pooled features of the lab's fields (each field carries
its image's label; each image weighs the same whatever its number of fields). At
prediction the heads score every field and the usual aggregation rule (mean of the
top fields) and vote apply. The site's threshold and review band are chosen on
out-of-fold predictions (stratified k-fold over images), and the same out-of-fold
predictions give the figures the lab sees: ROC AUC with a bootstrap 95% interval,
sensitivity and specificity with Wilson 95% intervals (at a threshold chosen on those
same predictions, so slightly optimistic). The site's domain statistics (colour,
features, red-cell size) come from its images.
"""

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from allscan.models.calibration import weighted_mean
from allscan.training.dataset import list_split
from allscan.domain.fields import FieldSet
from allscan.domain.gaussian import fit_gaussian
from allscan.scoring.pipeline import Pipeline
from allscan.domain.reference import DomainChecks, DomainError, scale_tolerance
from allscan.domain.site import Head, SiteProfile
from allscan.scoring.vote import aggregate
from allscan.images import ImageError, decode_file
from allscan.models.manifest import EnsembleConfig
from allscan.training.operating_point import wilson_interval
from allscan.training.tune import tune_review_band, tune_threshold

MIN_PER_CLASS = 5
RELIABLE_PER_CLASS = 20
"""Below this many images of a class the figures' intervals are wide: adapt warns."""
HEAD_C = 0.05
"""Inverse L2 strength of the heads on standardised features (few images, thousands of features)."""
FEATURE_COMPONENTS = 16
BOOTSTRAP = 2000


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int
    fields: FieldSet
    features: dict[str, np.ndarray]


@dataclass(frozen=True)
class AdaptResult:
    """What ``adapt`` fitted and measured.

    Attributes:
        profile: The fitted profile.
        figures: Cross-validated figures with 95% intervals.
        skipped: ``(path, reason)`` for each unreadable image left out.
        warnings: Plain-language cautions (too few images).
        seconds: Wall time.
    """

    profile: SiteProfile
    figures: dict
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def collect(pipeline: Pipeline, folder: Path, batch_size: int = 16
            ) -> tuple[list[LabelledImage], list[tuple[Path, str]]]:
    """Fields and pooled features of every readable image under ``folder/ALL`` and ``folder/normal``."""
    paths, labels = list_split(folder)
    images, skipped, prepared = [], [], []
    for path, label in zip(paths, labels):
        try:
            prepared.append((path, int(label), pipeline.fields(decode_file(path).rgb)))
        except ImageError as err:
            skipped.append((path, str(err)))
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        outputs = pipeline.field_outputs([fs for _, _, fs in chunk], batch_size)
        images += [LabelledImage(p, y, fs, feats) for (p, y, fs), (_, feats) in zip(chunk, outputs)]
    return images, skipped


def fit_heads(images: list[LabelledImage], c: float = HEAD_C) -> dict[str, Head]:
    """One L2 logistic regression per model on field features, each image weighing the same."""
    from sklearn.linear_model import LogisticRegression

    labels = np.concatenate([np.full(im.fields.tiles, im.label) for im in images])
    weights = np.concatenate([np.full(im.fields.tiles, 1.0 / im.fields.tiles) for im in images])
    heads = {}
    for name in images[0].features:
        x = np.concatenate([im.features[name] for im in images]).astype(np.float64)
        mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        model.fit((x - mean) / std, labels, sample_weight=weights)
        heads[name] = Head(mean, std, model.coef_[0], float(model.intercept_[0]))
    return heads


def image_probabilities(heads: dict[str, Head], images: list[LabelledImage]) -> np.ndarray:
    """Each image's site p(ALL): heads on its fields, the aggregation rule, equal-weight vote."""
    weights = {name: 1.0 / len(heads) for name in heads}
    return np.asarray([weighted_mean(aggregate({n: h.probabilities(im.features[n]) for n, h in heads.items()},
                                               weights), weights) for im in images])


def fold_count(labels: np.ndarray) -> int:
    """Folds of the cross-validation: 5, or the size of the smaller class when it is below 5."""
    return min(5, int(np.bincount(labels, minlength=2).min()))


def out_of_fold(images: list[LabelledImage], c: float = HEAD_C, seed: int = 0) -> np.ndarray:
    """Out-of-fold site p(ALL) per image (stratified k-fold, k = min(5, smaller class))."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([im.label for im in images])
    oof = np.empty(len(images))
    folds = StratifiedKFold(fold_count(labels), shuffle=True, random_state=seed)
    for train, test in folds.split(np.zeros(len(labels)), labels):
        heads = fit_heads([images[i] for i in train], c)
        oof[test] = image_probabilities(heads, [images[i] for i in test])
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


def figures(labels: np.ndarray, oof: np.ndarray, threshold: float) -> dict:
    """Cross-validated AUC, sensitivity and specificity with 95% intervals."""
    auc, auc_low, auc_high = bootstrap_auc(labels, oof)
    called = oof >= threshold
    tp, pos = int((called & (labels == 1)).sum()), int((labels == 1).sum())
    tn, neg = int((~called & (labels == 0)).sum()), int((labels == 0).sum())
    return {
        "method": f"stratified {fold_count(labels)}-fold cross-validation over images",
        "n_ALL": pos, "n_normal": neg,
        "roc_auc": round(auc, 4), "roc_auc_95ci": [round(auc_low, 4), round(auc_high, 4)],
        "sensitivity": round(tp / pos, 4), "sensitivity_95ci": [round(v, 4) for v in wilson_interval(tp, pos)],
        "specificity": round(tn / neg, 4), "specificity_95ci": [round(v, 4) for v in wilson_interval(tn, neg)],
        "threshold": threshold,
    }


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


def adapt(pipeline: Pipeline, folder: Path, source: str = "") -> AdaptResult:
    """Fit a site profile on ``folder/ALL`` and ``folder/normal`` (see the module docstring).

    Raises:
        DomainError: Too few readable images of a class, or models without a domain reference.
        FileNotFoundError: Neither class folder holds images.
    """
    started = time.monotonic()
    if pipeline.reference is None:
        raise DomainError("these models came without a domain reference; adapt needs one")
    images, skipped = collect(pipeline, Path(folder))
    labels = np.array([im.label for im in images], dtype=int)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise DomainError(f"adapt needs at least {MIN_PER_CLASS} readable images in each of ALL/ and normal/; "
                          f"found {counts[1]} ALL and {counts[0]} normal")
    warnings = [f"only {counts.min()} images in the smaller class: the figures' intervals are wide; "
                f"{RELIABLE_PER_CLASS} or more per class give figures worth trusting"] \
        if counts.min() < RELIABLE_PER_CLASS else []
    oof = out_of_fold(images)
    threshold = tune_threshold(labels, oof)
    band = tune_review_band(labels, oof, threshold)
    heads = fit_heads(images)
    names = tuple(heads)
    meta = {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": source or str(folder),
        "images": {"ALL": int(counts[1]), "normal": int(counts[0]), "skipped": len(skipped)},
        "options": pipeline.options.key(),
        "cross_validated": figures(labels, oof, threshold),
        "warnings": warnings,
    }
    profile = SiteProfile(pipeline.ensemble.manifest.digest, heads,
                          EnsembleConfig({n: 1.0 / len(names) for n in names}, threshold, band),
                          site_checks(images, pipeline.reference.feature_models), meta)
    return AdaptResult(profile, meta["cross_validated"], skipped, warnings, time.monotonic() - started)
