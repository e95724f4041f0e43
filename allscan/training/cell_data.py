"""Cell crops from labelled fields, for training the cell classifier with the fields' labels as weak
labels (multiple-instance learning: a field is a bag of cells; an ALL field holds blasts, a benign
field none)."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.domain.cells import cell_crops
from allscan.domain.fields import crowded_field_diameter
from allscan.domain.reference import DomainChecks
from allscan.domain.scale import estimate_diameter
from allscan.images import decode_file
from allscan.training.dataset import LabelledSet, blank_box, list_split


@dataclass(frozen=True)
class CellBags:
    """The cells of labelled fields.

    Attributes:
        paths: The fields.
        labels: Each field's label (1 = ALL), ``(n_fields,)``.
        crops: Every cell's crop, ``(n_cells, s, s, 3)`` uint8.
        field: The field each cell came from (an index into ``paths``), ``(n_cells,)``.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    crops: np.ndarray
    field: np.ndarray

    @property
    def cell_labels(self) -> np.ndarray:
        """Each cell's weak label: its field's."""
        return self.labels[self.field]

    def instances(self, keep: np.ndarray | None = None, labels: np.ndarray | None = None) -> LabelledSet:
        """The cells (those where ``keep``) as a labelled image set, labelled ``labels`` (default: weakly)."""
        keep = np.ones(len(self.field), bool) if keep is None else keep
        labels = self.cell_labels if labels is None else labels
        return LabelledSet(tuple(self.paths[i] for i in self.field[keep]), self.crops[keep],
                           labels[keep].astype(np.int32))

    def save(self, path: Path) -> None:
        np.savez(path, paths=np.array([str(p) for p in self.paths]), labels=self.labels, crops=self.crops,
                 field=self.field)

    @classmethod
    def load(cls, path: Path) -> "CellBags":
        with np.load(path) as data:
            return cls(tuple(Path(p) for p in data["paths"]), data["labels"], data["crops"], data["field"])


def field_cells(rgb: np.ndarray, fallback_diameter: float, checks: DomainChecks | None = None) -> np.ndarray:
    """The crops of one field's cells, at its own red-cell size (``fallback_diameter`` when none can
    be estimated), as predict finds them: with the domain reference's ``checks``, a crowded single field
    is measured at its red cells (:func:`~allscan.domain.fields.crowded_field_diameter`)."""
    estimate = estimate_diameter(rgb)
    crowded = crowded_field_diameter(estimate, checks, rgb.shape[:2]) if checks is not None else None
    return cell_crops(rgb, crowded or estimate.diameter or fallback_diameter).crops


def load_cell_bags(root: Path, box: tuple[int, int, int, int] | None, fallback_diameter: float,
                   workers: int = 2, checks: DomainChecks | None = None) -> CellBags:
    """Find and crop the cells of every field under ``root/normal`` and ``root/ALL``.

    Args:
        root: A split folder.
        box: The dataset's label box, blanked before cells are looked for, or None.
        fallback_diameter: Red-cell diameter for a field whose size cannot be estimated.
        workers: Threads.
        checks: The domain reference's checks (see :func:`field_cells`), or None.
    """
    paths, labels = list_split(root)
    return bags_of(paths, labels, box, fallback_diameter, workers, checks)


def bags_of(paths: Sequence[Path], labels: np.ndarray, box: tuple[int, int, int, int] | None,
            fallback_diameter: float, workers: int = 2, checks: DomainChecks | None = None) -> CellBags:
    """:func:`load_cell_bags` for listed fields."""

    def one(path: Path) -> np.ndarray:
        rgb = decode_file(path).rgb
        return field_cells(blank_box(rgb, box) if box is not None else rgb, fallback_diameter, checks)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        per_field = list(pool.map(one, paths))
    field = np.concatenate([np.full(len(c), i, np.int32) for i, c in enumerate(per_field)]) if per_field else \
        np.zeros(0, np.int32)
    crops = np.concatenate(per_field) if per_field else np.zeros((0, 64, 64, 3), np.uint8)
    return CellBags(tuple(paths), np.asarray(labels, np.int32), crops, field)
