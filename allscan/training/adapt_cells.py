"""``allscan adapt --cells``: fit a site profile's cell part on a lab's own labelled cell crops.

A lab's teaching set holds crops of single cells, each centred on one cell with some of its
surroundings, at any size (the PBC set's are 360×363 pixels). Each crop is brought to the cell
classifier as a cell of a smear field is: its red-cell diameter is estimated
(:func:`~allscan.domain.scale.estimate_diameter`), its white cells are found
(:func:`~allscan.domain.cells.find_cells`) and the one nearest its centre is cut at the classifier's
physical size (:func:`~allscan.domain.cells.crop_cells`). A crop without a size estimate, or without
a white cell near its centre, is left out and listed with the reason: its scale or its cell would be
a guess.

The cell models stay frozen, as the field models do for :mod:`allscan.training.adapt`, and the rules
are the same: per member a logistic regression with strong L2 regularisation on its pooled features
of the crops, p(blast) the heads' equal-weight mean, the site's cell threshold (best balanced
accuracy) and the figures (ROC AUC with a bootstrap 95% interval, sensitivity and specificity with
Wilson 95% intervals) from out-of-fold predictions (stratified k-fold over crops); the part records
the runtime the cell models ran in, as the field part does. Crops of one
patient can land in different folds, so the figures are optimistic where a lab's crops come from few
patients.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.domain.cells import CROP_SIZE, Cell, crop_cells, find_cells, normalise_colour
from allscan.domain.scale import estimate_diameter
from allscan.domain.site import RUNTIME, CellPart, Head
from allscan.images import ImageError, decode_file
from allscan.models.calibration import weighted_mean
from allscan.scoring.cells import CellClassifier
from allscan.training.adapt import (
    HEAD_C,
    AdaptResult,
    LabelledSet,
    Labelling,
    check_readable,
    cross_validated,
    few_warning,
    figures,
    fit_head,
    list_labelled,
)
from allscan.training.tune import tune_threshold

CELL_CLASSES = ("normal", "blast")
MIN_CROPS_PER_CLASS = 10
"""With 5 folds, each then tests at least 2 crops of each class."""
RELIABLE_CROPS_PER_CLASS = 30
"""Below this many crops of a class the figures' intervals are wide: adapt warns."""
NEAR_CENTRE = 1.0
"""A crop's cell is the white cell whose nucleus centre lies within this many red-cell diameters
(7.5 µm) of the crop's centre: a nucleus sits off its cell's centre by less than that (an eccentric
plasma-cell or monocyte nucleus included), and a crop centred on something else is not taken."""

CELL_LABELLING = Labelling(CELL_CLASSES, "crops", MIN_CROPS_PER_CLASS, "adapt --cells")


class CropError(Exception):
    """A crop that cannot be brought to the cell classifier: no red-cell size, or no white cell at its centre."""


@dataclass(frozen=True)
class CellCropSet:
    """The crops ``adapt --cells`` fits on, cut and checked before any model loads.

    Attributes:
        folder: The crops' folder (holding ``blast/`` and ``normal/``).
        crops: Each readable crop's cell as the classifier sees it, ``(n, CROP_SIZE, CROP_SIZE, 3)`` uint8.
        labels: 1 for blast, 0 for normal, one per crop.
        skipped: ``(path, reason)`` for each file left out.
        seconds: Time spent reading and cutting them.
    """

    folder: Path
    crops: np.ndarray
    labels: np.ndarray
    skipped: tuple[tuple[Path, str], ...] = ()
    seconds: float = 0.0

    def counts(self) -> np.ndarray:
        """Crops per label: ``[normal, blast]``."""
        return np.bincount(self.labels, minlength=2)


def list_crops(folder: Path) -> LabelledSet:
    """Every file under ``folder/blast`` and ``folder/normal``, once (see :func:`list_labelled`).

    Raises:
        LabelledSetError: No crops, the same crop in both classes, or fewer than
            :data:`MIN_CROPS_PER_CLASS` files in a class.
    """
    return list_labelled(folder, CELL_LABELLING)


def centre_cell(rgb: np.ndarray) -> np.ndarray:
    """The white cell at the centre of a lab's cell crop, cut and colour normalised as the classifier sees
    cells: ``(CROP_SIZE, CROP_SIZE, 3)`` uint8.

    Raises:
        CropError: No red-cell size can be estimated, or no white cell lies near the centre.
    """
    estimate = estimate_diameter(rgb)
    if estimate.diameter is None:
        raise CropError(f"no red-cell size estimate ({estimate.reason}): the cell's scale would be a guess")
    height, width = rgb.shape[:2]
    cx, cy = (width - 1) / 2, (height - 1) / 2

    def distance(cell: Cell) -> float:
        return math.hypot(cell.x - cx, cell.y - cy)

    nearest = min(find_cells(rgb, estimate.diameter), key=distance, default=None)
    if nearest is None or distance(nearest) > NEAR_CENTRE * estimate.diameter:
        raise CropError(f"no white cell within {NEAR_CENTRE:g} red-cell diameter of the centre "
                        f"(red cells {estimate.diameter:.0f} px across)")
    return normalise_colour(crop_cells(rgb, [nearest], estimate.diameter))[0]


def read_crops(listed: LabelledSet) -> CellCropSet:
    """Cut the cell at the centre of every crop of ``listed`` (:func:`centre_cell`); an unreadable crop, or
    one without a size or a centred cell, is left out and listed.

    Raises:
        LabelledSetError: Fewer than :data:`MIN_CROPS_PER_CLASS` readable crops in a class; the message
            names the first crop left out and why.
    """
    started = time.monotonic()
    crops, labels, skipped = [], [], list(listed.skipped)
    for path, label in zip(listed.paths, listed.labels):
        try:
            crops.append(centre_cell(decode_file(path).rgb))
            labels.append(label)
        except (ImageError, CropError) as err:
            skipped.append((path, str(err)))
    cut = CellCropSet(listed.folder, np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8),
                      np.asarray(labels, dtype=int), tuple(skipped), time.monotonic() - started)
    check_readable(cut.counts(), skipped, CELL_LABELLING)
    return cut


def fit_cell_heads(features: dict[str, np.ndarray], labels: np.ndarray, c: float = HEAD_C) -> dict[str, Head]:
    """One head per cell model on the crops' pooled features ``{name: (n, d)}``."""
    return {name: fit_head(x, labels, c=c) for name, x in features.items()}


def cell_probabilities(heads: dict[str, Head], features: dict[str, np.ndarray]) -> np.ndarray:
    """p(blast) per crop: the heads' equal-weight mean."""
    members = {name: head.probabilities(features[name]) for name, head in heads.items()}
    return np.asarray(weighted_mean(members, _equal(heads)), dtype=float)


def out_of_fold_cells(features: dict[str, np.ndarray], labels: np.ndarray, c: float = HEAD_C,
                      seed: int = 0) -> np.ndarray:
    """Out-of-fold p(blast) per crop (:func:`~allscan.training.adapt.cross_validated` over crops)."""
    return cross_validated(labels,
                           lambda train: fit_cell_heads({n: x[train] for n, x in features.items()}, labels[train], c),
                           lambda heads, test: cell_probabilities(heads, {n: x[test] for n, x in features.items()}),
                           seed)


def _equal(heads: dict[str, Head]) -> dict[str, float]:
    return {name: 1.0 / len(heads) for name in heads}


def adapt_cells(classifier: CellClassifier, cut: CellCropSet, source: str = "") -> AdaptResult:
    """Fit a site profile's cell part on crops cut by :func:`read_crops` (see the module docstring).

    Args:
        classifier: The cell classifier whose members' features the heads are fitted on.
        cut: The lab's crops.
        source: Where they came from, for the profile [default: their folder].
    """
    started = time.monotonic()
    _, _, features = classifier.probabilities(cut.crops)
    labels, counts = cut.labels, cut.counts()
    warnings = few_warning(counts, RELIABLE_CROPS_PER_CLASS, "crops")
    oof = out_of_fold_cells(features, labels)
    threshold = tune_threshold(labels, oof)
    heads = fit_cell_heads(features, labels)
    meta = {
        "source": source or str(cut.folder),
        "crops": {"blast": int(counts[1]), "normal": int(counts[0]), "skipped": len(cut.skipped)},
        RUNTIME: classifier.ensemble.runtime,
        "cross_validated": figures(labels, oof, threshold, CELL_LABELLING),
        "warnings": warnings,
    }
    part = CellPart(classifier.ensemble.manifest.digest, heads, _equal(heads), threshold, meta)
    return AdaptResult(part, meta["cross_validated"], list(cut.skipped), warnings,
                       cut.seconds + time.monotonic() - started)
