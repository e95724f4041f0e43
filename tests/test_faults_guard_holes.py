"""The guard judges the fields that made an image's verdict, not only its median field.

An image's verdict is the mean of its three most suspicious fields; the feature check took the median over all
its fields. A smear photo inside a white page margin (a figure pasted into a document, a scan of a printout) had
most of its fields all smear and familiar, so it was in domain, while the fields at the margin, half white, made
the verdict: Aria mosaics of benign fields with a white border were all called ALL, in domain (15 of 15; now 8
of them are out of domain, and of 12 benign fields centred on a 448-px white canvas 1 is called ALL in domain
where 10 were).
"""

from dataclasses import replace

import numpy as np
import pytest

from allscan.domain.fields import DomainOptions, prepare_fields
from allscan.domain.gaussian import fit_gaussian
from allscan.domain.guard import assess
from allscan.domain.reference import DomainChecks
from allscan.scoring.pipeline import Pipeline
from tests.utils import disc_smear

TYPICAL = np.array([85, 2, -12, 12, 8, 14.0])


@pytest.fixture(scope="module")
def checks() -> DomainChecks:
    rng = np.random.default_rng(0)
    colours = rng.normal(TYPICAL, 0.5, (200, 6))
    features = rng.normal(0, 1, (300, 10))
    return DomainChecks(16.0, 1.3, fit_gaussian(colours[:150], colours[150:], quantile=0.99),
                        fit_gaussian(features[:200], features[200:], components=4, quantile=0.99))


def _fields(checks: DomainChecks, familiar: int, foreign: int) -> np.ndarray:
    """``familiar`` fields at the reference's centre, then ``foreign`` ones far from it."""
    far = checks.features.center + 50 * checks.features.spread * checks.features.projection[0]
    return np.stack([checks.features.center] * familiar + [far] * foreign)


def test_an_image_whose_deciding_fields_are_foreign_is_out_of_domain(checks):
    features = _fields(checks, 9, 3)
    assert assess(checks, 16.0, TYPICAL, features, False, 600).domain == "in"  # its median field is familiar
    judged = assess(checks, 16.0, TYPICAL, features, False, 600, deciding=np.array([9, 10, 11]))
    assert judged.domain == "out" and judged.score > 1
    assert len(judged.reasons) == 1 and judged.reasons[0].startswith("the fields that decided its verdict")


def test_familiar_deciding_fields_neither_flag_nor_clear_an_image(checks):
    features = _fields(checks, 9, 3)
    judged = assess(checks, 16.0, TYPICAL, features, False, 600, deciding=np.array([0, 1, 2]))
    assert judged == assess(checks, 16.0, TYPICAL, features, False, 600)  # as before: in domain
    mostly_foreign = _fields(checks, 3, 9)
    judged = assess(checks, 16.0, TYPICAL, mostly_foreign, False, 600, deciding=np.array([0, 1, 2]))
    assert judged.domain == "out" and judged.reasons[0].startswith("image content unlike")
    single = _fields(checks, 0, 1)  # one field: its median is its deciding field's, judged once
    assert assess(checks, 16.0, TYPICAL, single, False, 224, deciding=np.array([0])).reasons == \
        assess(checks, 16.0, TYPICAL, single, False, 224).reasons


def test_predict_judges_the_fields_with_the_highest_ensemble_probability(domain_models_dir, monkeypatch):
    pipeline = Pipeline.load(domain_models_dir, options=DomainOptions(stain_norm=False, cells=False),
                             load_models=False)
    reference = pipeline.reference
    diameter = reference.checks.rbc_diameter
    fields = prepare_fields(disc_smear(diameter, (600, 600), seed=4), reference, pipeline.input_sizes,
                            DomainOptions(stain_norm=False, rbc_diameter=diameter))
    count = fields.tiles
    assert count > 6
    foreign = [1, 4, 5]  # the most suspicious fields, and the only foreign ones
    p = np.full(count, 0.1)
    p[foreign] = 0.9
    features = _fields(reference.checks, count, 0)
    features[foreign] = _fields(reference.checks, 0, 3)
    first, *others = reference.feature_models
    feats = {first: features} | {name: np.zeros((count, 0)) for name in others}
    probs = {name: p for name in pipeline.config.weights}
    monkeypatch.setattr(pipeline, "field_outputs", lambda fieldsets, batch_size: [(probs, feats)])
    fields = replace(fields, colour=reference.checks.colour.center)  # the stain is not under test
    [score] = pipeline.score([fields])
    assert score.domain.domain == "out" and score.review
    assert "the fields that decided its verdict" in score.domain.notes
    p[:] = 0.1
    p[[0, 2, 3]] = 0.9  # familiar fields decide: in domain, as the median field is
    [score] = pipeline.score([fields])
    assert score.domain.domain == "in"
