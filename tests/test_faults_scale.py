"""A single field whose red cells read smaller than the training's is at another scale: rescaled and flagged.

The single-field scale tolerance is the training fields' own spread of estimates, which crowded fields (merged
cells read larger) widen to ×2.88 around 15.5 px on Aria. Applied both ways, it let through, unrescaled and in
domain, fields whose cells read up to 2.9 times smaller: Aria fields tiled 2×2 or 3×3 and reduced to 224 px (a
smear imaged at a lower magnification, a camera frame reduced to the models' input) were scored at the wrong
scale, and 12 of 16 such ALL mosaics came out normal.
"""

from dataclasses import replace

import pytest

from allscan.domain.fields import DomainOptions, prepare_fields
from allscan.domain.guard import assess
from allscan.domain.reference import SCALE_TOLERANCE, DomainReference
from allscan.models.manifest import load_manifest
from tests.utils import disc_smear

SPREAD = 2.5
"""A single-field tolerance as wide as crowded training fields make it."""


@pytest.fixture(scope="module")
def reference(domain_models_dir) -> DomainReference:
    """The tiny models' domain reference (red cells 16 px), its single-field spread widened to :data:`SPREAD`."""
    fitted = DomainReference.for_models(domain_models_dir, load_manifest(domain_models_dir))
    return replace(fitted, checks=replace(fitted.checks, scale_tolerance=SPREAD))


def _judge(reference: DomainReference, diameter: float):
    rgb = disc_smear(diameter, seed=3)
    fields = prepare_fields(rgb, reference, [16], DomainOptions(stain_norm=False, rbc_diameter=diameter))
    features = reference.checks.features.center[None, :]
    return fields, assess(reference.checks, fields.diameter, reference.checks.colour.center, features, False,
                          long_side=224)


def test_a_single_field_with_cells_half_the_training_size_is_rescaled_and_out_of_domain(reference):
    ref = reference.checks.rbc_diameter
    assert reference.checks.tolerance(224) == SPREAD
    assert reference.checks.tolerance(224, smaller=True) == SCALE_TOLERANCE
    fields, judged = _judge(reference, ref / 2)
    assert fields.scale == pytest.approx(2.0, rel=1e-6)
    assert judged.domain == "out" and judged.reasons[0].startswith(f"red cells {ref / 2:.0f} px across")


def test_a_single_field_with_cells_read_larger_within_the_spread_stays_as_it_is_and_in_domain(reference):
    ref = reference.checks.rbc_diameter
    fields, judged = _judge(reference, ref * 2)
    assert fields.scale == 1.0
    assert judged.domain == "in"
    fields, judged = _judge(reference, ref / 1.2)  # within ×1.3 either way: as before
    assert fields.scale == 1.0 and judged.domain == "in"
