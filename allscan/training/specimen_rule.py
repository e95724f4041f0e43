"""Fitting the specimen rule on labelled specimens (validation data) and measuring it.

The rule's sensitivity comes first, as the image threshold's does: among the rules that call
every ALL specimen of the fitting set ALL, the one with the highest specificity wins; ties go to
the rule needing more ALL fields (one stray field decides less), then to fewer reviews.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import product

from allscan.results.types import VERDICT_ALL, ImageResult
from allscan.scoring.specimens import SpecimenRule, summarise
from allscan.training.operating_point import wilson_interval

MIN_ALL = (1, 2, 3)
TOP = (1, 2, 3, 5)
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class SpecimenFigures:
    """A rule's figures on labelled specimens, with Wilson 95% intervals."""

    specimens: int
    tp: int
    fn: int
    tn: int
    fp: int
    review: int
    sensitivity: float
    sensitivity_95ci: tuple[float, float]
    specificity: float
    specificity_95ci: tuple[float, float]


def measure(rule: SpecimenRule, results: Iterable[ImageResult], labels: dict[str, int]) -> SpecimenFigures:
    """Figures of ``rule`` on images grouped by ``specimen`` whose specimens are labelled (1 = ALL)."""
    summaries = [s for s in summarise(results, rule) if s.specimen in labels]
    called = {s.specimen: s.verdict == VERDICT_ALL for s in summaries}
    tp = sum(called[s] for s in called if labels[s] == 1)
    fn = sum(not called[s] for s in called if labels[s] == 1)
    tn = sum(not called[s] for s in called if labels[s] == 0)
    fp = sum(called[s] for s in called if labels[s] == 0)
    return SpecimenFigures(len(summaries), tp, fn, tn, fp, sum(s.review for s in summaries),
                           tp / max(tp + fn, 1), wilson_interval(tp, tp + fn), tn / max(tn + fp, 1),
                           wilson_interval(tn, tn + fp))


def fit(results: list[ImageResult], labels: dict[str, int], review_band: tuple[float, float],
        fitted_on: str) -> tuple[SpecimenRule, SpecimenFigures]:
    """The best rule of the grid (see the module docstring) and its figures on the fitting set."""
    best = None
    for min_all, top, threshold in product(MIN_ALL, TOP, THRESHOLDS):
        rule = SpecimenRule(min_all, top, threshold, review_band)
        figures = measure(rule, results, labels)
        key = (figures.fn == 0, figures.specificity, min_all, -figures.review, -top)
        if best is None or key > best[0]:
            best = (key, rule, figures)
    _, rule, figures = best
    return replace(rule, fitted_on=fitted_on), figures
