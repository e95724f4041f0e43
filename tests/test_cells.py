"""The white-cell finder on synthetic smear fields whose nuclei are known."""

import cv2
import numpy as np
import pytest

from allscan.domain.cells import (CROP_SIZE, RBC_UM, REFERENCE_LAB_MEAN, Cell, cell_crops, find_cells,
                                  normalise_colour)
from allscan.domain.scale import estimate_diameter

BACKGROUND = (236, 234, 240)
RED_CELL = (214, 168, 176)
"""Pink: absorbs green a little more than blue, as eosin-stained red cells do."""
NUCLEUS = (112, 62, 168)
"""Dark purple: absorbs green far more than blue, as Romanowsky-stained nuclei do."""

FIELD = 14
"""Field side, in red-cell diameters."""
RED_CELLS = [(1.2, 1.2), (5.5, 1.3), (12.5, 1.5), (1.3, 6.0), (6.0, 6.5), (11.0, 6.2), (1.5, 12.5),
             (6.5, 11.8), (12.3, 12.4), (9.5, 12.6), (12.6, 9.6), (7.2, 8.6)]
"""Red-cell centres, in red-cell diameters: none touches a nucleus."""
SINGLE = ((3.0, 3.0), 1.1)
PAIR = (((8.5, 3.0), 1.1), ((9.55, 3.0), 1.1))
"""Two round nuclei that touch (centres 1.05 apart, each 1.1 across)."""
LOBES = (((3.0, 9.0), 0.5), ((3.62, 9.0), 0.5), ((3.31, 9.54), 0.5))
"""One neutrophil nucleus: three lobes a little apart."""
PLATELET = ((10.0, 9.5), 0.25)
"""Platelet-sized dark dot: not a white cell."""


def smear(diameter: float, lobes=LOBES) -> np.ndarray:
    """A field with :data:`RED_CELLS` and the nuclei above, ``diameter`` pixels to a red cell."""
    side = round(FIELD * diameter)
    image = np.empty((side, side, 3), np.uint8)
    image[:] = BACKGROUND
    nuclei = [SINGLE, *PAIR, *lobes, PLATELET]
    for (x, y), across, colour in [(c, 1.0, RED_CELL) for c in RED_CELLS] + [(*n, NUCLEUS) for n in nuclei]:
        centre = (round(x * diameter), round(y * diameter))
        cv2.circle(image, centre, round(across * diameter / 2), colour, -1, lineType=cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), max(0.5, 0.03 * diameter))
    noise = np.random.default_rng(0).normal(0, 2.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def expected_centres(diameter: float) -> list[tuple[float, float]]:
    lobed = np.mean([centre for centre, _ in LOBES], axis=0)
    centres = [SINGLE[0], PAIR[0][0], PAIR[1][0], tuple(lobed)]
    return [(x * diameter, y * diameter) for x, y in centres]


@pytest.mark.parametrize("diameter", [16.0, 64.0])
def test_finds_each_white_cell_once_at_its_nucleus(diameter):
    cells = find_cells(smear(diameter), diameter)
    assert len(cells) == 4, [(round(c.x), round(c.y)) for c in cells]
    tolerance = max(2.0, 0.1 * diameter)
    for x, y in expected_centres(diameter):
        distances = [np.hypot(c.x - x, c.y - y) for c in cells]
        assert min(distances) <= tolerance, (x, y, [(round(c.x), round(c.y)) for c in cells])


@pytest.mark.parametrize("diameter", [16.0, 64.0])
def test_box_and_area_of_a_round_nucleus(diameter):
    (x, y), across = SINGLE
    cell = min(find_cells(smear(diameter), diameter), key=lambda c: np.hypot(c.x - x * diameter, c.y - y * diameter))
    radius = across * diameter / 2
    for edge, want in zip((cell.x0, cell.y0, cell.x1, cell.y1),
                          (x * diameter - radius, y * diameter - radius, x * diameter + radius, y * diameter + radius)):
        assert abs(edge - want) <= max(2.0, 0.1 * diameter)
    true_um2 = np.pi / 4 * (across * RBC_UM) ** 2  # 1.1 red cells across: about 53 µm²
    assert cell.area_um2(diameter) == pytest.approx(true_um2, rel=0.15)


def test_the_scale_estimates_flattened_green_channel_finds_the_same_cells():
    image = smear(16.0)
    estimate = estimate_diameter(image)
    assert estimate.green is not None and estimate.green.shape == image.shape[:2]
    assert find_cells(image, 16.0, estimate.mask, estimate.green) == find_cells(image, 16.0, estimate.mask)
    # Found in a reduced copy, the cells do not take a channel of the image's own size.
    assert find_cells(image, 48.0, estimate.mask, estimate.green) == find_cells(image, 48.0)


def test_lobes_far_apart_are_separate_objects():
    """Lobes spread well beyond a white cell's size are not joined into one cell (the join is local)."""
    spread = tuple(((x + 3 * i, y), 0.9) for i, ((x, y), _) in enumerate(LOBES[:2]))
    cells = find_cells(smear(16.0, lobes=spread), 16.0)
    assert len(cells) == 5


def test_red_cells_alone_hold_no_white_cell():
    image = smear(24.0, lobes=())
    image[:] = BACKGROUND
    for x, y in RED_CELLS:
        cv2.circle(image, (round(x * 24), round(y * 24)), 12, RED_CELL, -1, lineType=cv2.LINE_AA)
    assert find_cells(image, 24.0) == []


def test_area_in_square_micrometres_takes_a_red_cell_as_its_size():
    cell = Cell(x=10.0, y=10.0, x0=5, y0=5, x1=15, y1=15, nucleus_px=100.0)
    assert cell.area_um2(15.0) == pytest.approx(100.0 * (7.5 / 15.0) ** 2)
    assert cell.area_um2(30.0) == pytest.approx(cell.area_um2(15.0) / 4)


def _tinted(rgb: np.ndarray, gains) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * np.asarray(gains, np.float32), 0, 255).astype(np.uint8)


def test_crops_of_one_field_in_two_stain_tints_look_alike_once_normalised():
    field = smear(16.0)
    plain = cell_crops(field, 16.0)
    tinted = cell_crops(_tinted(field, (0.85, 1.0, 1.15)), 16.0)
    assert len(plain) == len(tinted) == 4 and plain.crops.shape == (4, CROP_SIZE, CROP_SIZE, 3)
    raw_gap = np.abs(_tinted(field, (0.85, 1.0, 1.15)).astype(int) - field.astype(int)).mean()
    assert np.abs(plain.crops.astype(int) - tinted.crops.astype(int)).mean() < raw_gap / 4
    lab = cv2.cvtColor(plain.crops[0], cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(axis=0)
    assert np.allclose(lab, REFERENCE_LAB_MEAN, atol=4)


def test_a_flat_crop_is_normalised_without_dividing_by_zero():
    flat = np.full((1, 8, 8, 3), 200, np.uint8)
    out = normalise_colour(flat)
    assert out.shape == flat.shape and (out.reshape(-1, 3) == out[0, 0, 0]).all()


def test_an_image_without_a_size_estimate_is_searched_at_the_training_scale(domain_models_dir):
    from allscan.domain.fields import TRAINING_SCALE_NOTE
    from allscan.scoring.pipeline import Pipeline

    pipeline = Pipeline.load(domain_models_dir)
    field = np.full((224, 224, 3), BACKGROUND, np.uint8)
    cv2.circle(field, (112, 112), 9, NUCLEUS, -1, lineType=cv2.LINE_AA)  # one white cell, no red cells to measure
    fields = pipeline.fields(field)
    assert fields.diameter is None and TRAINING_SCALE_NOTE in fields.notes
    assert len(fields.cells) == 1 and fields.cells.rbc_diameter == pipeline.reference.checks.rbc_diameter


def test_a_nucleus_at_the_edge_of_a_reduced_image_keeps_its_box_inside_the_image():
    """Boxes reached past the image (y1 4106 in a 4101-px-high JPEG): one scale for both axes mapped the reduced
    image back, whose sides were rounded apart, and a file decoded reduced was scaled up without a bound."""
    from allscan.domain.cells import CellCrops

    diameter = 61.0  # analysed at 24/61 of its size: 854 x 853 px become 336 x 336 (sides rounded apart)
    image = np.ascontiguousarray(smear(diameter)[:853])
    height, width = image.shape[:2]
    cv2.circle(image, (width - 20, height - 20), 34, NUCLEUS, -1, lineType=cv2.LINE_AA)  # cut by the corner
    cells = find_cells(image, diameter)
    assert cells and all(0 <= c.x0 < c.x1 <= width and 0 <= c.y0 < c.y1 <= height for c in cells)
    edge = Cell(2240.0, 2045.0, 2230, 2035, 2245, 2051, 100.0)  # reaching the last row of a 2245 x 2051 decode
    scaled = CellCrops((edge,), np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8), 15.0).scaled(4489 / 2245,
                                                                                               (4489, 4101))
    assert (scaled.cells[0].x1, scaled.cells[0].y1) == (4489, 4101)
