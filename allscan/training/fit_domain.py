"""Fitting the domain reference from the training data: the shipping step runs it for every new set
of models, so models never ship with stale statistics.

- red-cell size: median estimate over the training split, and the factor around it that holds
  99% of the training images' estimates (the scale tolerance);
- stain reference: mean colour statistics of the training split (Reinhard target);
- colour and feature distributions: fitted on the training split; each threshold is a
  quantile of the validation split's distances (held-out images, not the test split).
"""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from allscan.training.dataset import blank_box, list_split, read_all
from allscan.domain.fields import whole_image
from allscan.domain.gaussian import fit_gaussian
from allscan.domain.reference import (DOMAIN_JSON, DomainChecks, DomainError, DomainReference, check_limits,
                                     scale_tolerance)
from allscan.domain.scale import analysis_copy, estimate_diameter
from allscan.domain.stain import colour_stats
from allscan.models.ensemble import Ensemble
from allscan.models.manifest import load_manifest, save_manifest

FEATURE_COMPONENTS = 32
THRESHOLD_QUANTILE = 0.999


def describe(ensemble: Ensemble, paths: list[Path], box, batch_size: int = 32
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Red-cell diameters (NaN where none), raw colour statistics and concatenated pooled features
    of whole training-style fields."""
    names = tuple(m.name for m in ensemble.members)

    def one(rgb: np.ndarray):
        if box is not None:
            rgb = blank_box(rgb, box)
        reduced = analysis_copy(rgb)
        estimate = estimate_diameter(rgb, reduced)
        colour = colour_stats(reduced[0])
        diameter = np.nan if estimate.diameter is None else estimate.diameter
        return diameter, whole_image(rgb, ensemble.input_sizes, colour)

    diameters, colours, features = [], [], []
    described = read_all(paths, one, max(1, min(4, os.cpu_count() or 1)))
    for start in range(0, len(described), batch_size):
        chunk = described[start:start + batch_size]
        batches = {s: np.concatenate([fs.inputs[s] for _, fs in chunk]) for s in ensemble.input_sizes}
        _, feats = ensemble.outputs(batches)
        features.append(np.concatenate([feats[n] for n in names], axis=1))
        diameters += [d for d, _ in chunk]
        colours += [fs.colour for _, fs in chunk]
    return np.asarray(diameters), np.stack(colours), np.concatenate(features)


def fit_reference(ensemble: Ensemble, data_dir: Path, box=None) -> DomainReference:
    """Fit the domain reference on ``data_dir/train``, thresholds on ``data_dir/val``."""
    train_paths, _ = list_split(Path(data_dir) / "train")
    val_paths, _ = list_split(Path(data_dir) / "val")
    diameters, colours, features = describe(ensemble, train_paths, box)
    _, val_colours, val_features = describe(ensemble, val_paths, box)
    colour = fit_gaussian(colours, held_out=val_colours, quantile=THRESHOLD_QUANTILE)
    feature = fit_gaussian(features, held_out=val_features, components=FEATURE_COMPONENTS,
                           quantile=THRESHOLD_QUANTILE)
    measured = diameters[np.isfinite(diameters)]
    median = float(np.median(measured)) if len(measured) else 0.0  # 0: no scale reference, no rescaling
    checks = DomainChecks(median, round(scale_tolerance(measured), 4), colour, feature)
    try:
        check_limits(checks)
    except ValueError as err:
        raise DomainError(f"the domain reference fitted on {len(train_paths)} train and {len(val_paths)} val images"
                          f" is degenerate ({err}): fit it on more images") from None
    return DomainReference(checks, colours.mean(axis=0), tuple(m.name for m in ensemble.members),
                           f"{data_dir}: train ({len(train_paths)} images) fitted, val ({len(val_paths)}) thresholds",
                           {name: entry.sha256 for name, entry in sorted(ensemble.manifest.models.items())})


def refit_domain(models_dir: Path, data_dir: Path) -> DomainReference:
    """Fit the domain reference for the models in ``models_dir`` and record it in their manifest."""
    models_dir = Path(models_dir)
    manifest = load_manifest(models_dir)
    ensemble = Ensemble.load(models_dir)
    reference = fit_reference(ensemble, data_dir, manifest.blank_box)
    sha = reference.save(models_dir)
    save_manifest(replace(manifest, domain={"file": DOMAIN_JSON, "sha256": sha}), models_dir)
    return reference
