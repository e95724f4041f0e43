"""Typed results: one per image, and the run's summary."""

from dataclasses import dataclass, field
from pathlib import Path

from allscan.models.registry import CELL_MODEL_NAMES, MODEL_NAMES
from allscan.paths import path_text

VERDICT_ALL = "ALL"
VERDICT_NORMAL = "normal"
VERDICT_ERROR = "error"

COLUMNS: tuple[str, ...] = (
    "path",
    "file",
    "sha256",
    "width",
    "height",
    "verdict",
    "p_all",
    "review",
    "agreement",
    *(f"p_all_{name}" for name in MODEL_NAMES),
    "error",
    "heatmap",
    "duplicate_of",
    "scale",
    "tiles",
    "domain",
    "domain_score",
    "notes",
    "specimen",
    "cells",
    "blasts",
    "blast_pct",
)
"""The results schema, in order, shared by CSV and the Excel ``Results`` sheet."""

CELL_COLUMNS: tuple[str, ...] = (
    "path",
    "sha256",
    "cell",
    "x",
    "y",
    "x0",
    "y0",
    "x1",
    "y1",
    "nucleus_area_px",
    "p_blast",
    *(f"p_blast_{name}" for name in CELL_MODEL_NAMES),
)
"""The cell table, in order: ``<out>.cells.csv`` and the Excel ``Cells`` sheet (one row per white cell)."""

SPECIMEN_COLUMNS: tuple[str, ...] = (
    "specimen",
    "verdict",
    "review",
    "images",
    "scored",
    "ALL",
    "normal",
    "review_images",
    "out_of_domain",
    "errors",
    "top_p_all",
    "top_image",
    "rule_score",
    "notes",
)
"""The specimens table, in order: ``<out>.specimens.csv`` and the Excel ``Specimens`` sheet."""

NOT_SCORED = "not scored yet (run interrupted)"
"""The run count, in the run metadata and summaries, of images found that have no row: the run was interrupted
before them (rerunning it finishes the job). Absent when every image has its row."""

DOMAIN_IN, DOMAIN_OUT = "in", "out"


@dataclass(frozen=True)
class CellResult:
    """One white cell of an image and how blast-like the cell classifier finds it.

    Attributes:
        cell: Its number within its image, from 1 (in the order found).
        x, y: Centroid of its nucleus, in the image file's pixels.
        x0, y0, x1, y1: Box around its nucleus (``x1``, ``y1`` exclusive).
        nucleus_area_px: Nucleus area in the file's pixels.
        p_blast: The cell classifier's calibrated probability that it is a blast.
        per_model: Each cell model's calibrated probability, by name.
    """

    cell: int
    x: float
    y: float
    x0: int
    y0: int
    x1: int
    y1: int
    nucleus_area_px: float
    p_blast: float
    per_model: dict[str, float]

    def row(self, path: str, sha256: str) -> dict[str, object]:
        """The row in :data:`CELL_COLUMNS` order."""
        values: dict[str, object] = {"path": path, "sha256": sha256, "cell": self.cell, "x": round(self.x, 1),
                                     "y": round(self.y, 1), "x0": self.x0, "y0": self.y0, "x1": self.x1,
                                     "y1": self.y1, "nucleus_area_px": round(self.nucleus_area_px, 1),
                                     "p_blast": self.p_blast}
        for name in CELL_MODEL_NAMES:
            values[f"p_blast_{name}"] = self.per_model.get(name)
        return values


@dataclass(frozen=True)
class CellFindings:
    """An image's white cells as the cell classifier judged them.

    Attributes:
        cells: Every cell found, in the order found.
        threshold: p(blast) at or above which a cell counts as a blast.
    """

    cells: tuple[CellResult, ...]
    threshold: float

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def blasts(self) -> int:
        return sum(c.p_blast >= self.threshold for c in self.cells)

    @property
    def blast_pct(self) -> float | None:
        """Blasts as a percentage of the cells found; None when none was found."""
        return 100.0 * self.blasts / self.count if self.cells else None

    def most_blast_like(self, k: int) -> list[CellResult]:
        """The ``k`` cells with the highest p(blast), highest first."""
        return sorted(self.cells, key=lambda c: -c.p_blast)[:k]


@dataclass(frozen=True)
class DomainInfo:
    """How an image was brought to the training domain, and whether it lies inside it.

    Attributes:
        scale: Rescale factor applied to reach the training red-cell size; None when no size
            could be estimated and the whole image was scored as one field.
        tiles: Number of fields scored.
        domain: ``in`` or ``out`` (out of the validated domain); empty when the models came
            without a domain reference.
        domain_score: The guard's score: above 1 means out of domain.
        notes: Why it is out of domain, and other remarks (no size estimate, colour normalised).
    """

    scale: float | None
    tiles: int
    domain: str = ""
    domain_score: float | None = None
    notes: str = ""


@dataclass(frozen=True)
class Score:
    """What the ensemble says about one image's content.

    Attributes:
        p_all: Ensemble (weighted soft vote) probability of ALL.
        verdict: ``ALL`` or ``normal`` from the manifest's threshold.
        review: True when ``p_all`` falls in the review band or the models disagree.
        agreement: How many models vote ALL on their own.
        per_model: Each model's probability of ALL, by registry name.
        domain: Scale, fields and the out-of-domain guard's answer (an out-of-domain image is
            always flagged for review).
        cells: Its white cells and the cell classifier's answers; None when cells were not looked for.
    """

    p_all: float
    verdict: str
    review: bool
    agreement: int
    per_model: dict[str, float]
    domain: DomainInfo | None = None
    cells: CellFindings | None = None

    @property
    def out_of_domain(self) -> bool:
        return self.domain is not None and self.domain.domain == DOMAIN_OUT


@dataclass(frozen=True)
class ImageResult:
    """One results row: an image file and its score, or the reason it could not be scored."""

    path: Path
    sha256: str = ""
    width: int | None = None
    height: int | None = None
    score: Score | None = None
    error: str = ""
    duplicate_of: str = ""
    heatmap: str = ""
    specimen: str = ""

    @property
    def verdict(self) -> str:
        return self.score.verdict if self.score else VERDICT_ERROR

    def row(self) -> dict[str, object]:
        """The row in :data:`COLUMNS` order; probabilities are floats, missing values None."""
        score = self.score
        values: dict[str, object] = {
            "path": path_text(self.path),
            "file": path_text(self.path.name),
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "verdict": self.verdict,
            "p_all": score.p_all if score else None,
            "review": score.review if score else None,
            "agreement": score.agreement if score else None,
        }
        for name in MODEL_NAMES:
            values[f"p_all_{name}"] = score.per_model.get(name) if score else None
        values["error"] = self.error
        values["heatmap"] = self.heatmap
        values["duplicate_of"] = self.duplicate_of
        domain = score.domain if score else None
        values["scale"] = domain.scale if domain else None
        values["tiles"] = domain.tiles if domain else None
        values["domain"] = domain.domain if domain else ""
        values["domain_score"] = domain.domain_score if domain else None
        values["notes"] = domain.notes if domain else ""
        values["specimen"] = self.specimen
        cells = score.cells if score else None
        values["cells"] = cells.count if cells else None
        values["blasts"] = cells.blasts if cells else None
        values["blast_pct"] = cells.blast_pct if cells else None
        return values

    def cell_rows(self) -> list[dict[str, object]]:
        """Its cells' rows in :data:`CELL_COLUMNS` order (none when cells were not looked for)."""
        cells = self.score.cells if self.score else None
        return [c.row(path_text(self.path), self.sha256) for c in cells.cells] if cells else []


@dataclass(frozen=True)
class SpecimenSummary:
    """One specimen (a patient's slide: many fields) and its verdict by the specimen rule.

    Attributes:
        specimen: The specimen's id.
        verdict: ``ALL``, ``normal``, or ``error`` when none of its images could be scored.
        review: True when the rule is near its boundary, or an image is out of domain or failed.
        images: Its images; ``scored`` of them were scored, ``errors`` not.
        all_: Images called ALL; ``normal``, ``review_images``, ``out_of_domain`` likewise.
        top_p_all: The highest image p(ALL), and ``top_image`` the image that has it.
        rule_score: What the rule compares with its threshold (the mean p(ALL) of the top images).
        notes: Why it is flagged, and how it was assigned when that needs saying.
    """

    specimen: str
    verdict: str
    review: bool
    images: int
    scored: int
    all_: int
    normal: int
    review_images: int
    out_of_domain: int
    errors: int
    top_p_all: float | None
    top_image: str
    rule_score: float | None
    notes: str = ""

    def row(self) -> dict[str, object]:
        """The row in :data:`SPECIMEN_COLUMNS` order."""
        return {"specimen": self.specimen, "verdict": self.verdict, "review": self.review, "images": self.images,
                "scored": self.scored, "ALL": self.all_, "normal": self.normal, "review_images": self.review_images,
                "out_of_domain": self.out_of_domain, "errors": self.errors, "top_p_all": self.top_p_all,
                "top_image": self.top_image, "rule_score": self.rule_score, "notes": self.notes}


@dataclass
class RunCounts:
    """Running tally shown live and in the summary."""

    total: int = 0
    done: int = 0
    all_: int = 0
    normal: int = 0
    review: int = 0
    errors: int = 0
    skipped: int = 0
    out_of_domain: int = 0
    cells: int = 0
    blasts: int = 0
    per_folder: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def unscored(self) -> int:
        """Images of the run (``total``) that have no row yet: it was interrupted before them."""
        return max(self.total - self.done, 0)

    def interruption(self) -> str:
        """What a report says first when the run was interrupted before some of its images ("" otherwise)."""
        if not self.unscored:
            return ""
        return (f"This run was interrupted: {self.done} of its {self.total} images were scored. The other "
                f"{self.unscored} have no row here, and the specimens holding them count them as not scored yet and "
                "are flagged for review. Rerun the same command to finish.")

    def add(self, result: ImageResult, skipped: bool = False) -> None:
        self.done += 1
        self.skipped += int(skipped)
        folder = self.per_folder.setdefault(path_text(result.path.parent),
                                            {"ALL": 0, "normal": 0, "error": 0, "review": 0, "out of domain": 0})
        folder[result.verdict] += 1
        if result.score is None:
            self.errors += 1
            return
        if result.score.cells is not None:
            self.cells += result.score.cells.count
            self.blasts += result.score.cells.blasts
        if result.score.verdict == VERDICT_ALL:
            self.all_ += 1
        else:
            self.normal += 1
        if result.score.review:
            self.review += 1
            folder["review"] += 1
        if result.score.out_of_domain:
            self.out_of_domain += 1
            folder["out of domain"] += 1
