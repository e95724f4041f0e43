"""Typed results: one per image, and the run's summary."""

from dataclasses import dataclass, field
from pathlib import Path

from allscan.registry import MODEL_NAMES

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
)
"""The results schema, in order, shared by CSV and the Excel ``Results`` sheet."""


@dataclass(frozen=True)
class Score:
    """What the ensemble says about one image's content.

    Attributes:
        p_all: Ensemble (weighted soft vote) probability of ALL.
        verdict: ``ALL`` or ``normal`` from the manifest's threshold.
        review: True when ``p_all`` falls in the review band or the models disagree.
        agreement: How many models vote ALL on their own.
        per_model: Each model's probability of ALL, by registry name.
    """

    p_all: float
    verdict: str
    review: bool
    agreement: int
    per_model: dict[str, float]


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

    @property
    def verdict(self) -> str:
        return self.score.verdict if self.score else VERDICT_ERROR

    def row(self) -> dict[str, object]:
        """The row in :data:`COLUMNS` order; probabilities are floats, missing values None."""
        score = self.score
        values: dict[str, object] = {
            "path": str(self.path),
            "file": self.path.name,
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
        return values


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
    per_folder: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, result: ImageResult, skipped: bool = False) -> None:
        self.done += 1
        self.skipped += int(skipped)
        folder = self.per_folder.setdefault(str(result.path.parent), {"ALL": 0, "normal": 0, "error": 0, "review": 0})
        folder[result.verdict] += 1
        if result.score is None:
            self.errors += 1
            return
        if result.score.verdict == VERDICT_ALL:
            self.all_ += 1
        else:
            self.normal += 1
        if result.score.review:
            self.review += 1
            folder["review"] += 1
