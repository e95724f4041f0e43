"""Faults a lab meets fitting and using a site profile (``allscan adapt``, ``--site``) and calling the Python
API: each refusal says what to fix, a second fit never silently drops what the first one fitted, a stop
ends as the README's exit codes say."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import allscan
from allscan.cli import app
from allscan.domain.reference import DomainError
from allscan.domain.site import PROFILE_JSON, load_profile
from tests.utils import adapted_profile, disc_smear, lab_crops, lab_fields, profile_meta, save_png


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(output):
    return " ".join(output.split())


# ---- a second adapt into a profile folder keeps the part it does not fit -------------------------------------

@pytest.fixture(scope="module")
def field_profile(domain_models_dir, tmp_path_factory):
    """A profile with a field part only, fitted on the tiny models with a domain reference."""
    root = tmp_path_factory.mktemp("field-part")
    result = _invoke("adapt", lab_fields(root / "lab"), "--out", root / "site", "--models", domain_models_dir)
    assert result.exit_code == 0, result.output
    return root / "site"


def test_adapting_the_cells_into_a_profile_keeps_its_field_part(field_profile, domain_models_dir, tmp_path):
    """``adapt --cells cells/ --out site/`` after ``adapt labelled/ --out site/`` wrote a profile with the cell part
    only: the field part the lab had fitted was gone without a word."""
    profile = shutil.copytree(field_profile, tmp_path / "site")
    field_part = profile_meta(profile)["fields"]
    cells = _invoke("adapt", "--cells", lab_crops(tmp_path / "cells"), "--out", profile, "--models", domain_models_dir)
    assert cells.exit_code == 0, cells.output
    assert "kept its field part" in _one_line(cells.output)
    meta = profile_meta(profile)
    assert meta["fields"] == field_part and meta["cells"]["crops"]["blast"] == 10
    loaded = load_profile(profile)
    assert loaded.fields is not None and loaded.cells is not None
    new = save_png(tmp_path / "new" / "field.png",
                   disc_smear(32, (448, 448), seed=9, nuclei=6, cell_rgb=(220, 160, 180)))
    scored = _invoke("predict", new, "-o", tmp_path / "r.csv", "--models", domain_models_dir, "--site", profile, "-q")
    assert scored.exit_code == 0, scored.output


def test_a_part_fitted_on_other_models_is_not_kept_and_the_user_is_told(field_profile, models_dir, tmp_path):
    """The field part was fitted on ``domain_models_dir``; ``models_dir`` holds other field models (no domain
    reference) with the same cell classifier: kept, the profile would be refused with these models."""
    profile = shutil.copytree(field_profile, tmp_path / "site")
    cells = _invoke("adapt", "--cells", lab_crops(tmp_path / "cells"), "--out", profile, "--models", models_dir)
    assert cells.exit_code == 0, cells.output
    assert "warning:" in cells.output and "field part already in" in _one_line(cells.output)
    assert "was fitted on other models (" in cells.output and "so it is not kept" in _one_line(cells.output)
    assert load_profile(profile).fields is None and load_profile(profile).cells is not None


def test_an_unreadable_profile_in_the_folder_is_replaced_with_a_warning(domain_models_dir, tmp_path):
    profile = tmp_path / "site"
    profile.mkdir()
    (profile / PROFILE_JSON).write_text("{ not json")
    result = _invoke("adapt", "--cells", lab_crops(tmp_path / "cells"), "--out", profile, "--models", domain_models_dir)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "cannot be read, so none of it is kept" in _one_line(result.output)
    assert load_profile(profile).cells is not None and load_profile(profile).fields is None


# ---- refusals say what to fix ---------------------------------------------------------------------------------

def test_too_few_readable_images_names_the_images_left_out(domain_models_dir, tmp_path):
    """Refused after decoding with "found 5 ALL and 4 normal" while normal/ held 5 files: which one, and why?"""
    lab = lab_fields(tmp_path / "lab")
    (lab / "normal" / "normal-4.png").write_bytes(b"not an image")
    result = _invoke("adapt", lab, "--out", tmp_path / "site", "--models", domain_models_dir)
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "found 5 ALL and 4 normal" in line and "normal-4.png" in line and "not a recognised image" in line


def test_a_refusal_after_the_models_load_leaves_no_empty_profile_folder(domain_models_dir, tmp_path):
    """The check that ``--out`` can be written made the folder: a refused adapt (exit 2, nothing done) left an empty
    ``site/`` behind, which ``--site`` then refused as holding no profile."""
    lab = lab_fields(tmp_path / "lab")
    (lab / "ALL" / "ALL-0.png").write_bytes(b"")
    result = _invoke("adapt", lab, "--out", tmp_path / "new" / "site", "--models", domain_models_dir)
    assert result.exit_code == 2 and "ALL-0.png" in _one_line(result.output)
    assert not (tmp_path / "new").exists()


def test_too_few_images_once_copies_are_left_out_names_the_copy(tmp_path):
    lab = lab_fields(tmp_path / "lab")
    (lab / "normal" / "normal-4.png").write_bytes((lab / "normal" / "normal-0.png").read_bytes())
    result = _invoke("adapt", lab, "--out", tmp_path / "site")
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "found 5 ALL and 4 normal" in line
    assert f"normal-4.png: same image as {lab / 'normal' / 'normal-0.png'}" in line


@pytest.mark.parametrize("names, absent, holds", [
    (("all", "Normal"), "ALL", "Normal/, all/"),
    (("ALL", "normals"), "normal", "ALL/, normals/"),
])
def test_class_folders_under_other_names_are_named_in_the_refusal(names, absent, holds, tmp_path):
    lab = lab_fields(tmp_path / "lab", names=names)
    result = _invoke("adapt", lab, "--out", tmp_path / "site")
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert f"{lab / absent}: no such folder" in line and f"{lab} holds {holds}" in line and "case-sensitive" in line
    assert not (tmp_path / "site").exists()


def test_a_class_path_that_is_a_file_is_named_in_the_refusal(tmp_path):
    lab = lab_fields(tmp_path / "lab", names=("ALL", "other"))
    (lab / "normal").write_text("")
    result = _invoke("adapt", lab, "--out", tmp_path / "site")
    assert result.exit_code == 2 and f"{lab / 'normal'}: not a folder" in _one_line(result.output)


# ---- a stop ends as Ctrl-C does ---------------------------------------------------------------------------------

_TERMINATED = (
    "import os, signal, sys\n"
    "import allscan.training.adapt as adapt\n"
    "collect = adapt.collect\n"
    "def terminated(*args, **kwargs):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "    return collect(*args, **kwargs)\n"
    "adapt.collect = terminated\n"
    "from allscan.cli import app\n"
    "app(sys.argv[1:], prog_name='allscan')\n"
)


def test_sigterm_during_adapt_exits_130_with_one_line_and_no_profile(domain_models_dir, tmp_path):
    """A service manager's stop killed adapt with exit code 143 and nothing said; the README gives 130."""
    lab = lab_fields(tmp_path / "lab")
    done = subprocess.run([sys.executable, "-c", _TERMINATED, "adapt", str(lab), "--out", str(tmp_path / "site"),
                           "--models", str(domain_models_dir)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert done.returncode == 130  # not -15: killed by the signal, nothing said
    assert done.stderr.strip().splitlines()[-1] == "error: interrupted"
    assert not (tmp_path / "site").exists()


# ---- the API says which item is not an image input ---------------------------------------------------------------

@pytest.mark.parametrize("images, named", [
    (b"field.png", "bytes"),
    ([b"field.png"], "bytes"),
    (123, "int"),
    (["field.png", None], "NoneType"),
    ([["a.png", "b.png"]], "list"),
])
def test_an_api_input_of_the_wrong_type_is_refused_naming_it(images, named, models_dir):
    with pytest.raises(TypeError, match=rf"files, folders or RGB uint8 arrays.*not {named}\b"):
        allscan.predict(images, models=models_dir)


@pytest.mark.parametrize("diameter", [np.float32(30), np.int64(30)])
def test_a_numpy_red_cell_size_scores_as_the_same_python_number(diameter, domain_models_dir):
    """A size computed in a notebook is a numpy number: the screener loaded, then failed on the first image with
    "Object of type float32 is not JSON serializable"."""
    rgb = disc_smear(30, (300, 300), seed=4, nuclei=3)
    given = allscan.load(domain_models_dir, rbc_diameter=diameter).predict(rgb)
    plain = allscan.load(domain_models_dir, rbc_diameter=30.0).predict(rgb)
    assert given.verdict[0] != "error" and given.scale[0] == plain.scale[0] < 1  # brought down to the reference size
    assert given.p_all[0] == plain.p_all[0]


@pytest.mark.parametrize("diameter", ["30", True, float("nan"), 0])
def test_a_red_cell_size_that_is_not_a_number_above_0_is_a_value_error(diameter, models_dir):
    with pytest.raises(ValueError, match="rbc_diameter must be"):
        allscan.load(models_dir, rbc_diameter=diameter)


# ---- a profile from $ALLSCAN_SITE that does not fit the models says where it came from ---------------------------

@pytest.fixture(scope="module")
def both_parts(domain_models_dir, tmp_path_factory):
    """A profile with a field part and a cell part fitted on the tiny models with a domain reference."""
    return adapted_profile(tmp_path_factory.mktemp("both-parts"), domain_models_dir)


def _without_cells(models, tmp_path):
    target = tmp_path / "no-cells"
    shutil.copytree(models, target)
    shutil.rmtree(target / "cells")
    return target


@pytest.mark.parametrize("models, reason", [
    ("models_dir", "fitted on models"),
    ("no cell classifier", "holds cell heads, but these models come without a cell classifier"),
])
def test_a_profile_from_allscan_site_for_other_models_is_refused_naming_the_variable(
        models, reason, both_parts, models_dir, domain_models_dir, tmp_path, monkeypatch):
    """Set once in a lab's shell, ``$ALLSCAN_SITE`` outlives a models update: the refusal named a profile the user
    never typed, without saying where it came from (and, for cell heads, named no profile at all)."""
    folder = models_dir if models == "models_dir" else _without_cells(domain_models_dir, tmp_path)
    image = save_png(tmp_path / "in" / "field.png", disc_smear(32, (448, 448), seed=3, nuclei=2))
    monkeypatch.setenv("ALLSCAN_SITE", str(both_parts))
    result = _invoke("predict", image, "-o", tmp_path / "r.csv", "--models", folder)
    assert result.exit_code == 2
    assert f"site profile {both_parts} (from $ALLSCAN_SITE): {reason}" in _one_line(result.output)
    with pytest.raises(DomainError) as refused:
        allscan.load(folder)
    assert f"site profile {both_parts} (from $ALLSCAN_SITE): {reason}" in str(refused.value)
