"""The out-of-domain guard: is this image like the ones the models (or a site profile) were fitted on?

It judges each image on what the models compute and on the image as it came, because
normalisation hides a shift from a guard that looks only at normalised features: on a
foreign lab's images, rescaled and colour-normalised fields fell inside the training
feature distribution while the models scored them at chance. So an image is out of
domain when any of these is beyond its limit:

- scale: its red cells are further from the reference size than ×1.3 (for an image of a single
  field, whose estimate rests on few cells: the reference fields' own spread of estimates);
- colour: its raw L*a*b* statistics are far (Mahalanobis) from the reference images';
- features: the models' pooled features of its fields are far from the reference's, judged over all its fields
  and over the fields whose probabilities made its verdict (an image larger than one field is judged on its
  three most suspicious fields: a familiar majority of fields must not vouch for the ones that decided it);
- background: none of its fields holds enough cells to score;
- unmeasured scale: an image larger than one field whose red cells could not be measured, which was
  scored whole, at a scale nobody knows (a single field without an estimate is scored whole as the
  training fields were: 2.7% of Aria's test fields have none).

The domain score is the largest of these statistics, each divided by its limit, so an
image is out of domain exactly when its score exceeds 1.
"""

import math
from dataclasses import dataclass

import numpy as np

from allscan.domain.reference import SINGLE_FIELD_SIDE, DomainChecks

IN_DOMAIN, OUT_OF_DOMAIN = "in", "out"


@dataclass(frozen=True)
class DomainAssessment:
    """The guard's answer for one image.

    Attributes:
        domain: ``in`` or ``out``.
        score: Largest check statistic over its limit (out when above 1).
        reasons: One phrase per check that failed.
    """

    domain: str
    score: float
    reasons: tuple[str, ...] = ()


def assess(checks: DomainChecks, diameter: float | None, colour: np.ndarray, features: np.ndarray,
           background_only: bool, long_side: int = 0, deciding: np.ndarray | None = None) -> DomainAssessment:
    """Judge one image.

    Args:
        checks: The reference statistics (training data's or a site's).
        diameter: The image's estimated red-cell diameter in its own pixels, if any.
        colour: Its raw colour statistics (see :func:`allscan.domain.stain.colour_stats`).
        features: Pooled features of its scored fields, ``(n_fields, d)``.
        background_only: Whether no field held enough cells.
        long_side: The image's longest side in pixels, which sets the scale tolerance.
        deciding: Indices of the fields whose probabilities made the verdict (see
            :func:`allscan.scoring.vote.top_fields`), judged on their own as well; None: all fields only.
    """
    parts: dict[str, float] = {}
    reasons = []
    if diameter is None and long_side > SINGLE_FIELD_SIDE:
        parts["scale"] = 2.0
        reasons.append("red cells could not be measured: scored whole, at an unknown scale")
    elif diameter is not None and checks.rbc_diameter > 0:
        ratio = diameter / checks.rbc_diameter
        parts["scale"] = abs(math.log(ratio)) / math.log(checks.tolerance(long_side, smaller=ratio < 1))
        if parts["scale"] > 1:
            reasons.append(f"red cells {diameter:.0f} px across where the reference's are "
                           f"{checks.rbc_diameter:.0f} px (×{1 / ratio:.2f} rescale)")
    parts["colour"] = float(checks.colour.distance(colour)[0]) / checks.colour.threshold
    if parts["colour"] > 1:
        reasons.append(f"stain colour unlike the reference images ({parts['colour']:.1f}× the limit)")
    distances = checks.features.distance(features)
    parts["features"] = float(np.median(distances)) / checks.features.threshold
    if parts["features"] > 1:
        reasons.append(f"image content unlike the reference images to the models ({parts['features']:.1f}× the limit)")
    if deciding is not None and len(deciding) < len(distances):
        # The verdict is its most suspicious fields' alone: a white page margin around a smear made the fields
        # that called benign images ALL, while the median field, all smear, was familiar.
        decided = float(np.median(distances[deciding])) / checks.features.threshold
        if decided > max(1.0, parts["features"]):
            reasons.append(f"the fields that decided its verdict unlike the reference images to the models "
                           f"({decided:.1f}× the limit)")
        parts["features"] = max(parts["features"], decided)
    if background_only:
        parts["background"] = 2.0
        reasons.append("mostly background: no field holds enough cells")
    score = max(parts.values())
    return DomainAssessment(OUT_OF_DOMAIN if score > 1 else IN_DOMAIN, round(score, 4), tuple(reasons))
