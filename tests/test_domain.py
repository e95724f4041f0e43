"""Other labs' images: red-cell scale, fields and aggregation, the out-of-domain guard, stain."""

import csv
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageCms
from scipy import ndimage

from allscan.domain.fields import DomainOptions
from allscan.domain.gaussian import fit_gaussian
from allscan.domain.guard import assess
from allscan.scoring.pipeline import Pipeline
from allscan.scoring.vote import aggregate
from allscan.domain.reference import DomainChecks
from allscan.domain.scale import DILATE_MAX_RADIUS, estimate_diameter, fill_holes, otsu_thresholds_3, pattern_spectrum
from allscan.domain.stain import colour_stats, hed_shift, reinhard
from allscan.domain.tiles import FIELD_SIZE, field_boxes, starts
from allscan.run.batch import run_batch
from allscan.results.types import COLUMNS
from tests.utils import disc_smear


@pytest.mark.parametrize(("diameter", "size"), [(16, (224, 224)), (40, (480, 640)), (90, (1200, 1600))])
def test_scale_estimator_measures_discs_of_known_diameter(diameter, size):
    estimate = estimate_diameter(disc_smear(diameter, size, seed=3))
    assert estimate.diameter == pytest.approx(diameter, rel=0.08)


def test_scale_estimator_says_why_on_a_blank_image():
    estimate = estimate_diameter(np.full((300, 300, 3), 240, np.uint8))
    assert estimate.diameter is None and estimate.reason


def test_fields_cover_the_image_with_overlap_and_one_field_for_a_training_field():
    assert starts(FIELD_SIZE) == [0]
    assert field_boxes(224, 224) == field_boxes(224, 224)[:1]
    xs = starts(600)
    assert xs[0] == 0 and xs[-1] == 600 - FIELD_SIZE
    assert all(b - a < FIELD_SIZE for a, b in zip(xs, xs[1:]))  # neighbours overlap


def test_aggregation_averages_the_top_fields_by_ensemble_probability():
    per_model = {"a": np.array([0.1, 0.9, 0.5, 0.8]), "b": np.array([0.2, 0.7, 0.9, 0.6])}
    # Ensemble p (equal weights): 0.15, 0.8, 0.7, 0.7 -> top 3 fields are 1, 2, 3 (stable order).
    result = aggregate(per_model, {"a": 0.5, "b": 0.5}, k=3)
    assert result["a"] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert result["b"] == pytest.approx((0.7 + 0.9 + 0.6) / 3)


def _checks(rng) -> DomainChecks:
    colours = rng.normal([85, 2, -12, 12, 8, 14], 0.5, (200, 6))
    features = rng.normal(0, 1, (300, 10))
    return DomainChecks(16.0, 1.3, fit_gaussian(colours[:150], colours[150:], quantile=0.99),
                        fit_gaussian(features[:200], features[200:], components=4, quantile=0.99))


def test_guard_passes_a_typical_image_and_flags_scale_colour_and_features():
    rng = np.random.default_rng(0)
    checks = _checks(rng)
    typical = np.array([85, 2, -12, 12, 8, 14.0])
    inside = assess(checks, 17.0, typical, rng.normal(0, 1, (1, 10)), False)
    assert inside.domain == "in" and inside.score <= 1 and not inside.reasons
    big_cells = assess(checks, 70.0, typical, rng.normal(0, 1, (1, 10)), False)
    assert big_cells.domain == "out" and "red cells" in big_cells.reasons[0]
    assert big_cells.score == pytest.approx(math.log(70 / 16) / math.log(1.3), rel=1e-3)
    stained = assess(checks, 16.0, typical + [0, 20, 10, 0, 0, 0], rng.normal(0, 1, (1, 10)), False)
    assert stained.domain == "out" and "colour" in stained.reasons[0]
    odd = assess(checks, 16.0, typical, rng.normal(6, 1, (1, 10)), False)
    assert odd.domain == "out" and "content" in odd.reasons[0]
    blank = assess(checks, None, typical, rng.normal(0, 1, (1, 10)), True)
    assert blank.domain == "out" and "background" in blank.reasons[0]
    unmeasured_field = assess(checks, None, typical, rng.normal(0, 1, (1, 10)), False, long_side=224)
    assert unmeasured_field.domain == "in"  # scored whole, as the training fields were
    unmeasured = assess(checks, None, typical, rng.normal(0, 1, (1, 10)), False, long_side=6720)
    assert unmeasured.domain == "out" and "could not be measured" in unmeasured.reasons[0]


def test_reinhard_brings_a_hed_shifted_image_back_to_the_reference_colour():
    rgb = disc_smear(16, seed=1)
    reference = colour_stats(rgb)
    shifted = hed_shift(rgb, np.array([1.4, 0.7, 1.0]), np.array([0.05, -0.03, 0.0]))
    assert np.abs(colour_stats(shifted) - reference).max() > 3
    restored = reinhard(shifted, colour_stats(shifted), reference)
    assert np.abs(colour_stats(restored) - reference).max() < 1.5


def test_colour_stats_are_the_mean_and_std_of_the_littlecms_lab_values():
    rgb = disc_smear(16, seed=2)
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"))).reshape(-1, 3)
    values = np.concatenate([lab[:, :1] * (100.0 / 255.0), lab[:, 1:].view(np.int8)], axis=1).astype(np.float64)
    expected = np.concatenate([values.mean(axis=0), values.std(axis=0)])
    np.testing.assert_allclose(colour_stats(rgb), expected, rtol=0, atol=1e-9)


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def test_training_style_field_is_one_unscaled_field_in_domain_and_a_foreign_photo_is_tiled_and_flagged(
        domain_ensemble, tmp_path):
    _write(tmp_path / "in" / "aria-like.png", disc_smear(16, seed=4242, nuclei=2))
    _write(tmp_path / "in" / "camera.png",
           disc_smear(64, (900, 1400), seed=7, cell_rgb=(230, 150, 150), background=(215, 225, 200)))
    out = tmp_path / "r.csv"
    run_batch([tmp_path / "in"], out, domain_ensemble)
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert list(rows["camera.png"]) == list(COLUMNS)
    mine, theirs = rows["aria-like.png"], rows["camera.png"]
    assert float(mine["scale"]) == 1.0 and mine["tiles"] == "1" and mine["domain"] == "in"
    assert theirs["domain"] == "out" and theirs["review"] == "true"
    assert float(theirs["scale"]) == pytest.approx(16 / 64, rel=0.1)
    assert int(theirs["tiles"]) > 1 and "red cells" in theirs["notes"]
    assert float(theirs["domain_score"]) > 1 >= float(mine["domain_score"])


def test_scale_tiles_and_domain_score_read_back_as_numbers_alike_from_csv_and_workbook(domain_ensemble, tmp_path):
    """They came back as text ('1' from a workbook, '1.0' from a CSV): df.tiles.sum() concatenated strings and
    df.domain_score > 1 raised TypeError."""
    import allscan

    _write(tmp_path / "in" / "aria-like.png", disc_smear(16, seed=4242, nuclei=2))
    _write(tmp_path / "in" / "camera.png", disc_smear(64, (900, 1400), seed=7))
    frames = []
    for suffix in (".csv", ".xlsx"):
        run_batch([tmp_path / "in"], tmp_path / f"r{suffix}", domain_ensemble)
        frames.append(allscan.read_results(tmp_path / f"r{suffix}"))
    for frame in frames:
        assert frame["tiles"].dtype == "Int64" and frame["tiles"].sum() > 2
        assert frame["scale"].dtype == frame["domain_score"].dtype == "float64"
        assert (frame["domain_score"] > 1).tolist() == (frame["domain"] == "out").tolist()
    pd.testing.assert_frame_equal(frames[0][["scale", "tiles", "domain_score"]],
                                  frames[1][["scale", "tiles", "domain_score"]], atol=1e-4)


def test_rbc_diameter_override_sets_the_scale(domain_ensemble):
    pipeline = Pipeline(domain_ensemble, DomainOptions(rbc_diameter=32.0))
    fields = pipeline.fields(disc_smear(16, (640, 640), seed=2))
    assert fields.scale == pytest.approx(pipeline.reference.checks.rbc_diameter / 32.0)


def test_a_rescale_beyond_the_pixel_limit_is_an_error_row_and_the_run_goes_on(domain_ensemble, tmp_path):
    """--rbc-diameter 1 enlarged an image 15.5 times (and a tiny red-cell estimate without bound): gigabytes and
    minutes for one image, or the process killed."""
    _write(tmp_path / "in" / "a.png", disc_smear(16, (480, 640), seed=1))
    _write(tmp_path / "in" / "b.png", disc_smear(16, seed=2))
    out = tmp_path / "r.csv"
    pipeline = Pipeline(domain_ensemble, DomainOptions(rbc_diameter=1.0))
    summary = run_batch([tmp_path / "in"], out, pipeline)
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert rows["a.png"]["verdict"] == "error" and summary.exit_code == 1
    assert "at the training scale this image would be" in rows["a.png"]["error"]
    assert "over the 50 MP limit" in rows["a.png"]["error"]
    assert rows["b.png"]["verdict"] in ("ALL", "normal")  # 224 px enlarged 15.5 times: 12 MP, scored


def test_no_scale_estimate_scores_the_whole_image_and_says_so(domain_ensemble):
    pipeline = Pipeline(domain_ensemble)
    score = pipeline.score([pipeline.fields(np.full((300, 400, 3), 235, np.uint8))])[0]
    assert score.domain.scale is None and score.domain.tiles == 1
    assert "no red-cell size estimate" in score.domain.notes


def test_an_unmeasured_image_larger_than_a_field_or_a_blank_one_is_never_in_domain(domain_ensemble):
    """A strip of 30 fields side by side, whose red cells the estimate could not measure, was squashed into one
    field and came out in domain (a silent normal where each field alone was ALL); a blank frame was in domain
    on scale and background."""
    pipeline = Pipeline(domain_ensemble)
    rng = np.random.default_rng(0)
    strip = np.clip(rng.normal((205, 130, 150), 4, (224, 6720, 3)), 0, 255).astype(np.uint8)  # packed cells...
    for y, x in zip(rng.integers(0, 224, 800), rng.integers(0, 6720, 800)):
        strip[y:y + 4, x:x + 4] = 245  # ...with specks of background between them: cells cover 97%
    blank = np.full((480, 640, 3), 250, np.uint8)
    strip_fields, blank_fields = pipeline.fields(strip), pipeline.fields(blank)
    assert strip_fields.scale is None and blank_fields.scale is None  # neither was measured
    strip_score, blank_score = pipeline.score([strip_fields, blank_fields])
    assert strip_score.domain.domain == "out" and strip_score.review
    assert "red cells could not be measured" in strip_score.domain.notes
    assert blank_score.domain.domain == "out" and "mostly background" in blank_score.domain.notes


def test_large_image_streams_through_reduced_decoding(domain_ensemble, tmp_path):
    from allscan.images import DECODE_MAX_SIDE, decode_file

    path = tmp_path / "big.jpg"
    Image.fromarray(disc_smear(48, (3000, 4500), seed=5)).save(path, quality=85)
    decoded = decode_file(path, max_side=DECODE_MAX_SIDE)
    assert (decoded.width, decoded.height) == (4500, 3000)
    assert max(decoded.rgb.shape) < 4500 and max(decoded.rgb.shape) >= DECODE_MAX_SIDE
    out = tmp_path / "r.csv"
    run_batch([path], out, domain_ensemble)
    row = next(csv.DictReader(out.open()))
    assert row["verdict"] in ("ALL", "normal") and int(row["tiles"]) > 1
    assert float(row["scale"]) == pytest.approx(16 / 48, rel=0.1)  # in the file's own pixels


def _lab(root, n=6):
    """A 'foreign lab': 448-px fields with 32-px red cells, tinted; ALL fields carry more nuclei."""
    for label, nuclei in (("ALL", 6), ("normal", 1)):
        for i in range(n):
            _write(root / label / f"{label}-{i}.png",
                   disc_smear(32, (448, 448), seed=500 + 10 * nuclei + i, nuclei=nuclei, cell_rgb=(220, 160, 180)))
    return root


def test_adapt_then_predict_with_the_site_profile(domain_models_dir, tmp_path):
    from typer.testing import CliRunner

    from allscan.cli import app

    runner = CliRunner()
    lab = _lab(tmp_path / "lab")
    profile = tmp_path / "site"
    result = runner.invoke(app, ["adapt", str(lab), "--out", str(profile), "--models", str(domain_models_dir)])
    assert result.exit_code == 0, result.output
    assert "roc auc" in result.output and "warning" in result.output  # 6 per class: too few to trust
    meta = __import__("json").loads((profile / "profile.json").read_text())
    assert meta["fields"]["images"] == {"ALL": 6, "normal": 6, "skipped": 0} and "cells" not in meta
    assert 0 <= meta["fields"]["cross_validated"]["roc_auc"] <= 1

    new = _write(tmp_path / "new" / "field.png",
                 disc_smear(32, (448, 448), seed=99, nuclei=6, cell_rgb=(220, 160, 180)))
    base_out, site_out = tmp_path / "base.csv", tmp_path / "site.csv"
    assert runner.invoke(app, ["predict", str(new), "-o", str(base_out), "--models", str(domain_models_dir),
                               "-q"]).exit_code == 0
    assert runner.invoke(app, ["predict", str(new), "-o", str(site_out), "--models", str(domain_models_dir),
                               "--site", str(profile), "-q"]).exit_code == 0
    base, site = next(csv.DictReader(base_out.open())), next(csv.DictReader(site_out.open()))
    assert base["domain"] == "out"  # twice the training red-cell size and another tint
    assert site["domain"] == "in"  # the site's own images define its domain
    assert site["p_all"] != base["p_all"]
    sidecar = __import__("json").loads((tmp_path / "site.csv.run.json").read_text())
    assert sidecar["domain"]["site"]["digest"] and sidecar["results_digest"] != \
        __import__("json").loads((tmp_path / "base.csv.run.json").read_text())["results_digest"]


def test_adapt_refuses_too_few_images_and_lists_unreadable_ones(domain_models_dir, tmp_path):
    from typer.testing import CliRunner

    from allscan.cli import app

    lab = _lab(tmp_path / "lab", n=5)
    (lab / "ALL" / "broken.png").write_bytes(b"not an image")
    runner = CliRunner()
    ok = runner.invoke(app, ["adapt", str(lab), "-o", str(tmp_path / "p"), "--models", str(domain_models_dir)])
    assert ok.exit_code == 0 and "broken.png" in ok.output.replace("\n", "")  # a long path wraps
    (lab / "normal" / "normal-0.png").unlink()
    few = runner.invoke(app, ["adapt", str(lab), "-o", str(tmp_path / "q"), "--models", str(domain_models_dir)])
    assert few.exit_code == 2 and "at least 5" in few.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, ["adapt", str(empty), "-o", str(tmp_path / "r"), "--models", str(domain_models_dir)])
    assert none.exit_code == 2


def test_adapt_leaves_out_a_blank_frame_and_says_so(domain_models_dir, tmp_path):
    """A white frame among the labelled images was fitted on: the site's limits, set by its farthest image,
    widened until colour-shifted ALL fields passed as in domain and normal, without a word."""
    import json

    from typer.testing import CliRunner

    from allscan.cli import app

    lab = _lab(tmp_path / "lab", n=5)
    _write(lab / "normal" / "white.png", np.full((448, 448, 3), 255, np.uint8))
    result = CliRunner().invoke(app, ["adapt", str(lab), "-o", str(tmp_path / "p"), "--models", str(domain_models_dir)])
    assert result.exit_code == 0, result.output
    assert "white.png" in result.output.replace("\n", "") and "mostly background" in result.output
    images = json.loads((tmp_path / "p" / "profile.json").read_text())["fields"]["images"]
    assert images == {"ALL": 5, "normal": 5, "skipped": 1}


def test_a_profile_for_other_models_or_tampered_is_refused(domain_models_dir, models_copy, domain_data, tmp_path):
    from typer.testing import CliRunner

    from allscan.cli import app
    from allscan.training.fit_domain import refit_domain

    runner = CliRunner()
    profile = tmp_path / "site"
    assert runner.invoke(app, ["adapt", str(_lab(tmp_path / "lab")), "-o", str(profile),
                               "--models", str(domain_models_dir)]).exit_code == 0
    image = _write(tmp_path / "in" / "x.png", disc_smear(16, seed=1))
    manifest = models_copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"threshold": 0.5', '"threshold": 0.45'))
    refit_domain(models_copy, domain_data)
    other = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "a.csv"), "--models", str(models_copy),
                                "--site", str(profile)])
    assert other.exit_code == 2 and f"site profile {profile}: fitted on models" in " ".join(other.output.split())
    with open(profile / "profile.npz", "ab") as handle:
        handle.write(b"x")
    tampered = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "b.csv"),
                                   "--models", str(domain_models_dir), "--site", str(profile)])
    assert tampered.exit_code == 2 and "does not match" in tampered.output


def test_a_domain_reference_fitted_for_other_model_files_is_refused(domain_models_dir, tmp_path):
    import json
    import shutil

    from allscan.models.files import save_half_precision
    from allscan.models.manifest import ManifestError, sha256_file
    from tests.utils import TINY_SIZES, tiny_model

    models = tmp_path / "models"
    shutil.copytree(domain_models_dir, models)
    save_half_precision(tiny_model("alexnet", TINY_SIZES["alexnet"], seed=99), models / "alexnet.keras")
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"]["alexnet"]["sha256"] = sha256_file(models / "alexnet.keras")
    (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="fit-domain"):
        Pipeline.load(models)


def test_scale_tolerance_is_the_reference_spread_for_single_fields_and_1_3_for_larger_images():
    from allscan.domain.reference import scale_tolerance

    rng = np.random.default_rng(0)
    diameters = np.concatenate([rng.normal(16, 1, 990), [30.0] * 10])  # a tail of odd estimates
    tolerance = scale_tolerance(diameters)
    assert 1.3 < tolerance < 2.2
    checks = replace(_checks(rng), scale_tolerance=tolerance)
    assert checks.tolerance(224) == tolerance and checks.tolerance(1400) == 1.3
    typical = np.array([85, 2, -12, 12, 8, 14.0])
    assert assess(checks, 16 * 1.5, typical, rng.normal(0, 1, (1, 10)), False, long_side=224).domain == "in"
    assert assess(checks, 16 * 1.5, typical, rng.normal(0, 1, (1, 10)), False, long_side=1400).domain == "out"


def disc_grid(diameter: int, touching: bool, size: int = 224) -> np.ndarray:
    """Non-overlapping discs ``{|d| < diameter / 2}`` on a grid (touching, or a third of a diameter
    apart), every seventh one dark like a nucleus so the three-class split has its three classes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    green = np.full((size, size), 215.0)
    step = diameter if touching else diameter + max(3, diameter // 3)
    centres = np.arange(diameter / 2 + 2, size - diameter / 2 - 2, step)
    for n, (cy, cx) in enumerate((cy, cx) for cy in centres for cx in centres):
        green[(yy - cy) ** 2 + (xx - cx) ** 2 < (diameter / 2) ** 2] = 90 if n % 7 == 3 else 150
    green += rng.normal(0, 4, green.shape)
    return np.clip(np.stack([green + 10, green, green + 20], -1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("touching", [False, True])
@pytest.mark.parametrize(("diameter", "expected"), [(12, 13.0), (16, 17.09), (24, 25.0), (32, 33.02)])
def test_scale_estimator_gives_the_granulometric_size_of_synthetic_discs(diameter, expected, touching):
    # Granulometry measures the largest inscribed disc, and the estimate adds half a pixel to the
    # mean radius that disappears: a digital disc of diameter d reads about d + 1, whether the
    # discs touch or not (the openings cut touching discs at their single-pixel necks).
    estimate = estimate_diameter(disc_grid(diameter, touching))
    assert estimate.diameter == pytest.approx(expected, rel=0.01)


def test_fill_holes_fills_only_background_not_4_connected_to_the_border():
    rows = ["##########..",
            "#........#..",
            "#.#####..#..",  # a hole inside a hole's wall: both filled
            "#.#...#..#..",
            "#.#####..#..",
            "##########..",
            "......#..###",  # a U open to the border (right): kept
            ".....#.#.#.#",  # a hole closed on its four sides, open only diagonally: filled
            "......#..#.#"]
    mask = np.array([[c == "#" for c in row] for row in rows])
    expected = mask.copy()
    expected[1:5, 1:9] = True
    expected[7, 6] = True
    assert np.array_equal(fill_holes(mask), expected)


@pytest.mark.parametrize("radius", [10, 30])  # both ways of opening: dilation and distance transform
def test_pattern_spectrum_keeps_a_disc_whole_up_to_its_radius_and_not_beyond(radius):
    yy, xx = np.mgrid[:100, :100]
    mask = (yy - 50) ** 2 + (xx - 50) ** 2 < radius ** 2
    radii = np.arange(2, 40, dtype=np.float64)
    areas = pattern_spectrum(mask, radii)
    assert areas[radii == radius][0] == mask.sum()
    assert np.all(areas[radii < radius] >= 0.95 * mask.sum())  # digital discs lose a few edge pixels
    assert not areas[radii > radius].any()


def test_pattern_spectrum_equals_openings_by_exact_distance_transforms():
    # The definition, with scipy's exact Euclidean distance transform, on blobs of many sizes and
    # one large enough for both ways of opening.
    rng = np.random.default_rng(1)
    noise = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 4)
    mask = noise > np.quantile(noise, 0.5)
    yy, xx = np.mgrid[:160, :160]
    mask |= (yy - 80) ** 2 + (xx - 80) ** 2 < 28 ** 2
    radii = np.arange(2, 40, dtype=np.float64)
    inside = ndimage.distance_transform_edt(mask)
    expected = [np.count_nonzero(ndimage.distance_transform_edt(inside < r) < r) if (inside >= r).any() else 0
                for r in radii]
    assert max(radii[np.asarray(expected) > 0]) > DILATE_MAX_RADIUS
    assert np.array_equal(pattern_spectrum(mask, radii), expected)


def test_three_class_otsu_splits_three_grey_levels_at_the_first_best_thresholds():
    values = np.repeat(np.array([50, 120, 200], np.uint8), [300, 500, 200])
    assert otsu_thresholds_3(values) == (51, 121)  # classes < t1, t1..t2-1, >= t2; ties to the lowest
    assert otsu_thresholds_3(np.array([10, 10, 10, 10, 200, 200], np.uint8))[1] > 10  # empty middle class


def crowded_field(small: int, big_cells: int = 4) -> np.ndarray:
    """A 224-px field whose left part holds ``big_cells`` discs 60 px across (red cells merged into
    blobs, as where they pack) and whose right strip holds ``small`` discs 16 px across, the red cells
    themselves (every seventh dark like a nucleus, so the three-class split has its three classes)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:224, :224]
    green = np.full((224, 224), 215.0)
    blobs = [(32 + 66 * (i // 2), 32 + 66 * (i % 2)) for i in range(big_cells)]
    cells = [(10 + 21 * (i // 4), 146 + 21 * (i % 4)) for i in range(small)]
    for n, (cy, cx, r) in enumerate([(y, x, 30) for y, x in blobs] + [(y, x, 8) for y, x in cells]):
        green[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 90 if n % 7 == 5 else 150
    green += rng.normal(0, 4, green.shape)
    return np.clip(np.stack([green + 10, green, green + 20], -1), 0, 255).astype(np.uint8)


def test_a_crowded_single_field_is_measured_at_its_red_cells_not_at_its_merged_ones():
    from allscan.domain.fields import CROWDED_MIN_CELLS, crowded_field_diameter

    checks = replace(_checks(np.random.default_rng(0)), rbc_diameter=17.0, scale_tolerance=2.5)
    crowded = estimate_diameter(crowded_field(40))
    assert crowded.diameter > 17.0 * 2.5  # the merged blobs make the spectrum's highest peak
    assert crowded_field_diameter(crowded, checks, (224, 224)) == pytest.approx(17.0, rel=0.06)
    # too few cells of the training size to say the field is at the training scale
    few = estimate_diameter(crowded_field(CROWDED_MIN_CELLS // 2))
    assert few.diameter > 17.0 * 2.5 and crowded_field_diameter(few, checks, (224, 224)) is None
    # an estimate the tolerance allows, or an image larger than a single field, is left as it is
    assert crowded_field_diameter(crowded, replace(checks, scale_tolerance=4.0), (224, 224)) is None
    assert crowded_field_diameter(crowded, checks, (448, 448)) is None


def test_a_crowded_field_is_in_domain_on_scale_with_a_note(domain_ensemble):
    pipeline = Pipeline(domain_ensemble)  # trained on 224-px fields of red cells 16 px across, like these
    fields = pipeline.fields(crowded_field(40))
    assert fields.diameter == pytest.approx(pipeline.reference.checks.rbc_diameter, rel=0.1)
    assert fields.scale == 1.0 and any(n.startswith("crowded field: red cells 17 px") for n in fields.notes)
    notes = pipeline.score([fields])[0].domain.notes
    assert "crowded field" in notes and "px across where the reference's are" not in notes  # no scale flag


def test_exact_distance_is_the_same_whatever_opencvs_thread_count():
    # OpenCV's precise transform rounds differently per thread stripe, which moved a white cell's pixels
    # with the number of cores: the exact one equals scipy's Euclidean transform, on any thread count.
    import cv2

    from allscan.domain.scale import exact_distance

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    mask = np.zeros((300, 300), np.uint8)
    for _ in range(60):
        cy, cx, r = rng.uniform(0, 300, 2).tolist() + [rng.uniform(4, 30)]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    expected = np.sqrt(np.rint(ndimage.distance_transform_edt(mask) ** 2)).astype(np.float32)
    threads = cv2.getNumThreads()
    try:
        for count in (1, 2, 4):
            cv2.setNumThreads(count)
            np.testing.assert_array_equal(exact_distance(mask), expected)
    finally:
        cv2.setNumThreads(threads)


def test_rows_stored_by_an_earlier_method_revision_are_scored_again(domain_ensemble, tmp_path, monkeypatch):
    import allscan.scoring.pipeline as pipeline_module

    _write(tmp_path / "in" / "field.png", disc_smear(16, seed=5))
    out = tmp_path / "r.csv"
    assert run_batch([tmp_path / "in"], out, domain_ensemble).counts.skipped == 0
    assert run_batch([tmp_path / "in"], out, domain_ensemble).counts.skipped == 1
    monkeypatch.setattr(pipeline_module, "METHOD_REVISION", pipeline_module.METHOD_REVISION + 1)
    assert run_batch([tmp_path / "in"], out, domain_ensemble).counts.skipped == 0


def test_a_domain_reference_fitted_on_too_few_images_is_refused_and_never_loaded(models_copy, tmp_path):
    """fit-domain on one training image wrote limits of 0, and every predict after it ended in a
    ZeroDivisionError (exit 4)."""
    import json
    from dataclasses import replace as swap

    from allscan.domain.reference import DomainError, DomainReference
    from allscan.models.manifest import load_manifest, save_manifest
    from allscan.training.fit_domain import refit_domain
    from tests.utils import write_dataset

    data = tmp_path / "one"
    write_dataset(data / "train", counts={"normal": 0, "ALL": 1}, seed=0)
    write_dataset(data / "val", counts={"normal": 1, "ALL": 1}, seed=5)
    before = (models_copy / "manifest.json").read_bytes()
    with pytest.raises(DomainError, match="degenerate"):
        refit_domain(models_copy, data)
    assert (models_copy / "manifest.json").read_bytes() == before
    reference = DomainReference.for_models(models_copy, load_manifest(models_copy))
    if reference is None:  # the tiny models ship without one: fit one on enough images to tamper with
        reference = refit_domain(models_copy, _domain_data(tmp_path / "ok"))
    broken = swap(reference, checks=swap(reference.checks, colour=swap(reference.checks.colour, threshold=0.0)))
    sha = broken.save(models_copy)
    save_manifest(swap(load_manifest(models_copy), domain={"file": "domain.json", "sha256": sha}), models_copy)
    assert json.loads((models_copy / "domain.json").read_text())["colour_threshold"] == 0.0
    with pytest.raises(DomainError, match="colour limit is 0.0"):
        DomainReference.for_models(models_copy, load_manifest(models_copy))


def _domain_data(root):
    from tests.utils import write_dataset

    write_dataset(root / "train", counts={"normal": 6, "ALL": 6}, seed=0)
    write_dataset(root / "val", counts={"normal": 4, "ALL": 4}, seed=1000)
    return root
