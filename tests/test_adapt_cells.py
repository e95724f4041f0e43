"""``allscan adapt --cells``: cell heads fitted on a lab's own labelled cell crops, a profile holding a
field part, a cell part or both, the heads used when the profile is, and every refusal in one line."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from allscan.cli import app
from allscan.domain.reference import DomainError
from allscan.domain.site import DIGEST_KEY, PROFILE_JSON, PROFILE_NPZ, load_profile, meta_digest
from allscan.models.manifest import load_manifest, sha256_file
from allscan.scoring.pipeline import Pipeline
from tests.utils import cli_process, disc_smear, profile_meta, resign_profile

BLAST = (1.8, (120, 80, 170))
"""A blast's nucleus: large (1.8 red cells across), paler (fine chromatin)."""
NORMAL = (1.1, (80, 30, 140))
"""A lymphocyte's nucleus: small and dark."""


def _crop(seed: int, nucleus=NORMAL, centre=(48, 48), side: int = 96) -> np.ndarray:
    """A lab's cell crop: red cells 16 px across around one white cell's nucleus at ``centre``."""
    rgb = disc_smear(16, (side, side), seed=seed, nuclei=0)
    across, colour = nucleus
    cv2.circle(rgb, centre, round(across * 8), colour, -1)
    return rgb


def _save(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _crops(root, blast: int = 12, normal: int = 12):
    for label, count, nucleus in (("blast", blast, BLAST), ("normal", normal, NORMAL)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _save(root / label / f"{label}-{i}.png", _crop(1000 * (label == "blast") + i, nucleus))
    return root


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def adapted(models_dir, tmp_path_factory):
    """``adapt --cells`` run once on 12 + 12 good crops and three that cannot be used."""
    root = tmp_path_factory.mktemp("adapt-cells")
    crops = _crops(root / "crops")
    (crops / "blast" / "broken.png").write_bytes(b"not an image")
    _save(crops / "normal" / "blank.png", np.full((96, 96, 3), 236, np.uint8))
    _save(crops / "normal" / "off-centre.png", _crop(77, centre=(12, 12)))
    profile = root / "site"
    result = _invoke("adapt", "--cells", crops, "--out", profile, "--models", models_dir)
    return result, profile, crops


@pytest.fixture(scope="module")
def field_image(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("field") / "field.png", disc_smear(16, (224, 224), seed=5, nuclei=4))


def test_adapt_cells_writes_a_cell_part_with_cross_validated_figures(adapted, models_dir):
    result, profile, _ = adapted
    assert result.exit_code == 0, result.output
    assert "cell heads of site profile" in result.output and "roc auc" in result.output
    assert "warning" in result.output  # 12 per class: too few to trust the intervals
    meta = profile_meta(profile)
    assert meta["format"] == 3 and "fields" not in meta
    cells = meta["cells"]
    assert cells["crops"] == {"blast": 12, "normal": 12, "skipped": 3}
    assert cells["models_digest"] == load_manifest(models_dir / "cells").digest
    figures = cells["cross_validated"]
    assert (figures["n_blast"], figures["n_normal"]) == (12, 12) and "over crops" in figures["method"]
    for name in ("roc_auc", "sensitivity", "specificity"):
        low, high = figures[f"{name}_95ci"]
        assert 0 <= low <= figures[name] <= high <= 1
    assert 0 < cells["threshold"] < 1 and figures["threshold"] == cells["threshold"]


def test_unusable_crops_are_listed_with_the_reason_and_left_out(adapted):
    result, _, crops = adapted
    output = " ".join(result.output.split())  # the console wraps long lines
    assert f"left out {crops / 'blast' / 'broken.png'}: not a recognised image file" in output
    assert f"left out {crops / 'normal' / 'blank.png'}: no red-cell size estimate" in output
    assert f"left out {crops / 'normal' / 'off-centre.png'}: no white cell within 1 red-cell diameter" in output


def _cells_of(pipeline, image):
    from allscan.images import decode_file

    return pipeline.score([pipeline.fields(decode_file(image).rgb)])[0].cells


def test_a_profile_with_a_cell_part_judges_cells_by_its_heads_and_threshold(adapted, models_dir, field_image,
                                                                            tmp_path):
    _, profile, _ = adapted
    base, site = Pipeline.load(models_dir), Pipeline.load(models_dir, profile)
    assert site.digest != base.digest and site.site_fields is None
    plain, judged = _cells_of(base, field_image), _cells_of(site, field_image)
    assert plain.count == judged.count >= 2
    assert [c.x for c in plain.cells] == [c.x for c in judged.cells]  # the same cells, other answers
    assert not np.allclose([c.p_blast for c in plain.cells], [c.p_blast for c in judged.cells], atol=1e-3)
    assert judged.threshold == profile_meta(profile)["cells"]["threshold"]
    assert set(judged.cells[0].per_model) == {"vgg16"}

    edited = tmp_path / "edited"
    shutil.copytree(profile, edited)
    low = float(np.min([c.p_blast for c in judged.cells])) - 1e-3  # every cell at or above it is a blast
    resign_profile(edited, lambda meta: meta["cells"].update(threshold=low))
    assert _cells_of(Pipeline.load(models_dir, edited), field_image).blasts == judged.count

    rows = {}
    for name, site_args in (("base", ()), ("site", ("--site", edited))):
        out = tmp_path / f"{name}.csv"
        done = _invoke("predict", field_image, "-o", out, "--models", models_dir, "-q", *site_args)
        assert done.exit_code == 0, done.output
        rows[name] = next(csv.DictReader(out.open()))
    assert rows["site"]["p_all"] == rows["base"]["p_all"]  # no field part: the field verdict is the models'
    assert int(rows["site"]["blasts"]) == judged.count == int(rows["site"]["cells"])
    assert int(rows["base"]["blasts"]) == plain.blasts


def _lab(root):
    """Five labelled fields per class (96 px, red cells 16 px; ALL fields hold more nuclei)."""
    for label, nuclei in (("ALL", 4), ("normal", 1)):
        for i in range(5):
            _save(root / label / f"{label}-{i}.png", disc_smear(16, (96, 96), seed=100 * nuclei + i, nuclei=nuclei))
    return root


def test_a_profile_with_both_parts(domain_models_dir, field_image, tmp_path):
    profile = tmp_path / "site"
    result = _invoke("adapt", _lab(tmp_path / "lab"), "--cells", _crops(tmp_path / "crops", 10, 10),
                     "--out", profile, "--models", domain_models_dir)
    assert result.exit_code == 0, result.output
    assert "site profile" in result.output and "cell heads of site profile" in result.output
    meta = profile_meta(profile)
    assert meta["fields"]["images"] == {"ALL": 5, "normal": 5, "skipped": 0}
    assert meta["cells"]["crops"] == {"blast": 10, "normal": 10, "skipped": 0}
    loaded = load_profile(profile)
    assert loaded.fields.models_digest == load_manifest(domain_models_dir).digest
    assert loaded.cells.models_digest == load_manifest(domain_models_dir / "cells").digest
    pipeline = Pipeline.load(domain_models_dir, profile)
    assert pipeline.config == loaded.fields.ensemble and pipeline.cells.site.threshold == loaded.cells.threshold
    assert _cells_of(pipeline, field_image).threshold == loaded.cells.threshold
    assert set(pipeline.describe()["site"]["cross_validated"]) == {"fields", "cells"}


def _as_format_2(cells_and_fields, folder):
    """The field part of a format-3 profile written as allscan wrote profiles before cells (format 2: the field
    part's settings at the top level, the same arrays)."""
    shutil.copytree(cells_and_fields, folder)
    meta = profile_meta(folder)
    old = meta["fields"] | {"format": 2, "created": meta["created"], "arrays": PROFILE_NPZ,
                            "arrays_sha256": meta["arrays_sha256"]}
    old[DIGEST_KEY] = meta_digest(old)
    (folder / PROFILE_JSON).write_text(json.dumps(old, indent=2))
    return folder


def test_a_format_2_profile_still_loads_as_a_field_part(domain_models_dir, field_image, tmp_path):
    new = tmp_path / "new"
    assert _invoke("adapt", _lab(tmp_path / "lab"), "--out", new, "--models", domain_models_dir).exit_code == 0
    old = load_profile(_as_format_2(new, tmp_path / "old"))
    assert old.cells is None and old.fields.ensemble == load_profile(new).fields.ensemble
    assert old.fields.meta["images"] == {"ALL": 5, "normal": 5, "skipped": 0}
    out = tmp_path / "r.csv"
    done = _invoke("predict", field_image, "-o", out, "--models", domain_models_dir, "-q", "--site", tmp_path / "old")
    assert done.exit_code == 0, done.output
    pipeline = Pipeline.load(domain_models_dir, tmp_path / "old")
    assert pipeline.cells is not None and pipeline.cells.site is None  # cells judged by the models' own vote


def test_a_cell_part_fitted_on_other_cell_models_is_refused(adapted, models_copy, field_image, tmp_path):
    _, profile, _ = adapted
    manifest = models_copy / "cells" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"threshold": 0.5', '"threshold": 0.45'))
    with pytest.raises(DomainError, match="cell heads were fitted on cell models"):
        Pipeline.load(models_copy, profile)
    refused = _invoke("predict", field_image, "-o", tmp_path / "a.csv", "--models", models_copy, "--site", profile)
    assert refused.exit_code == 2 and "adapt --cells again" in refused.output
    assert len([line for line in refused.output.splitlines() if line.startswith("error:")]) == 1
    without = _invoke("predict", field_image, "-o", tmp_path / "b.csv", "--models", models_copy, "--site", profile,
                      "--no-cells", "-q")
    assert without.exit_code == 0, without.output  # the cell part is not used without cells
    shutil.rmtree(models_copy / "cells")
    gone = _invoke("predict", field_image, "-o", tmp_path / "c.csv", "--models", models_copy, "--site", profile)
    assert gone.exit_code == 2 and "without a cell classifier" in gone.output


def _adapt_refused(tmp_path, reason, *args):
    """adapt exits 2 with one line holding ``reason``, before TensorFlow loads."""
    code, lines, _, tensorflow = cli_process("adapt", *args, "--out", tmp_path / "site", "--models", tmp_path / "m")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and reason in lines[0], lines
    assert not tensorflow and not (tmp_path / "site" / PROFILE_JSON).exists()


@pytest.mark.parametrize("case", ["one class", "too few readable", "in both classes", "no folder"])
def test_a_crop_folder_adapt_cannot_fit_on_is_refused_in_one_line(case, models_dir, tmp_path):
    (tmp_path / "m" / "cells").mkdir(parents=True)
    shutil.copy(models_dir / "cells" / "manifest.json", tmp_path / "m" / "cells")  # checked, not loaded
    crops = tmp_path / "crops"
    if case == "one class":
        _crops(crops, 12, 0)
        reason = "needs at least 10 readable crops in each of blast/ and normal/; found 12 blast and 0 normal"
    elif case == "too few readable":
        _crops(crops, 12, 10)
        (crops / "normal" / "normal-3.png").write_bytes(b"not an image")
        reason = f"found 12 blast and 9 normal (1 left out; first {crops / 'normal' / 'normal-3.png'}: not a"
    elif case == "in both classes":
        _crops(crops, 12, 12)
        shutil.copy(crops / "blast" / "blast-0.png", crops / "normal" / "copied.png")
        reason = "the same image is labelled both ways"
    else:
        reason = f"no such folder: {crops}"
    _adapt_refused(tmp_path, reason, "--cells", crops)


def test_adapt_needs_labelled_images_or_cell_crops(tmp_path):
    code, lines, _, tensorflow = cli_process("adapt", "--out", tmp_path / "site")
    assert code == 2 and len(lines) == 1 and "give LABELLED" in lines[0] and "--cells" in lines[0], lines
    assert not tensorflow


def test_models_without_a_cell_classifier_are_refused_before_they_load(tmp_path):
    _adapt_refused(tmp_path, "come without a cell classifier", "--cells", _crops(tmp_path / "crops"))


def test_a_tampered_cell_part_is_refused_by_the_digest(adapted, tmp_path):
    _, profile, _ = adapted
    edited = tmp_path / "edited"
    shutil.copytree(profile, edited)
    text = (edited / PROFILE_JSON).read_text()
    threshold = profile_meta(edited)["cells"]["threshold"]
    (edited / PROFILE_JSON).write_text(text.replace(f'"threshold": {threshold}', '"threshold": 0.01'))
    with pytest.raises(DomainError, match="profile.json does not match the digest recorded in it"):
        load_profile(edited)

    swapped = tmp_path / "swapped"
    shutil.copytree(profile, swapped)
    with np.load(swapped / PROFILE_NPZ) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["cell_head_vgg16_coef"] = -arrays["cell_head_vgg16_coef"]
    np.savez(swapped / PROFILE_NPZ, **arrays)
    with pytest.raises(DomainError, match="profile.npz does not match the digest recorded in profile.json"):
        load_profile(swapped)
    resign_profile(swapped, lambda meta: meta.update(arrays_sha256=sha256_file(swapped / PROFILE_NPZ)))
    assert load_profile(swapped).cells.heads["vgg16"].coef[0] == arrays["cell_head_vgg16_coef"][0]


@pytest.mark.parametrize("change, reason", [
    (lambda m: m["cells"].update(threshold=1.5), "cells: threshold must lie between 0 and 1"),
    (lambda m: m["cells"].update(models=["resnet50"]), "cells: models must list distinct models of vgg16"),
    (lambda m: m["cells"]["weights"].update(vgg16=-1), "cells: weights"),
    (lambda m: m["cells"].update(models_digest=7), "cells: models_digest must be text"),
    (lambda m: m.update(cells=[1, 2]), "cells: must be an object"),
    (lambda m: m.pop("cells"), "holds neither a fields nor a cells part"),
])
def test_a_cell_part_out_of_range_is_refused_even_re_signed(adapted, tmp_path, change, reason):
    _, profile, _ = adapted
    edited = tmp_path / "edited"
    shutil.copytree(profile, edited)
    resign_profile(edited, change)
    with pytest.raises(DomainError, match=reason) as refused:
        load_profile(edited)
    assert str(edited) in str(refused.value) and "\n" not in str(refused.value)


def test_cell_head_arrays_of_the_wrong_shape_are_refused(adapted, tmp_path):
    _, profile, _ = adapted
    edited = tmp_path / "edited"
    shutil.copytree(profile, edited)
    with np.load(edited / PROFILE_NPZ) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["cell_head_vgg16_coef"] = arrays["cell_head_vgg16_coef"][:-1]
    np.savez(edited / PROFILE_NPZ, **arrays)
    resign_profile(edited, lambda meta: meta.update(arrays_sha256=sha256_file(edited / PROFILE_NPZ)))
    with pytest.raises(DomainError, match="the head of vgg16 has mismatched shapes .cell heads."):
        load_profile(edited)


def test_a_profile_cut_short_while_saving_leaves_the_old_one_whole(domain_models_dir, tmp_path, monkeypatch):
    site, cells_only = tmp_path / "site", tmp_path / "cells-only"
    assert _invoke("adapt", _lab(tmp_path / "lab"), "--out", site, "--models", domain_models_dir).exit_code == 0
    assert _invoke("adapt", "--cells", _crops(tmp_path / "crops", 10, 10), "--out", cells_only,
                   "--models", domain_models_dir).exit_code == 0
    before = load_profile(site)
    other = load_profile(cells_only)

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("allscan.domain.site.atomic_write_text", disk_full)
    with pytest.raises(OSError):
        other.save(site)
    after = load_profile(site)
    assert after.digest == before.digest and after.cells is None and after.fields is not None


def test_what_adapt_leaves_out_and_warns_reads_whole_in_a_log(domain_models_dir, tmp_path):
    lab = _lab(tmp_path / "a-lab-share-folder-with-a-long-name" / "labelled-fields-of-the-first-week-of-december")
    odd = lab / "normal" / "notes-about-this-slide-written-by-the-technician.png"
    odd.write_text("not an image")
    result = _invoke("adapt", lab, "--out", tmp_path / "site", "--models", domain_models_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("left out ") and line.endswith(f"{odd}: not a recognised image file")
               for line in lines), result.output
    assert any(line.startswith("warning: only 5 images") and line.endswith("worth trusting") for line in lines), \
        result.output
