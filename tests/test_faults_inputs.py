"""Faults, round two (issue 20, rows A, E, F, G, I, J): inputs from elsewhere are checked, and refused in
one line naming what is wrong, or taken each once; nothing is silently changed, lost or scored twice."""

import contextlib
import csv
import json
import math
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import allscan
from allscan.cli import app
from allscan.domain.gaussian import Gaussian
from allscan.domain.reference import DomainChecks, DomainError
from allscan.domain.site import DIGEST_KEY, PROFILE_JSON, FieldPart, Head, SiteProfile, load_profile, meta_digest
from allscan.models.manifest import EnsembleConfig
from allscan.models.registry import MODEL_NAMES
from allscan.results.frames import ResultsFileError
from allscan.results.types import COLUMNS
from tests.utils import cli_process, disc_smear, read_only, smear, write_image

FEATURES = 4


def _gaussian(d: int) -> Gaussian:
    return Gaussian(np.zeros(d), np.ones(d), np.zeros((0,)), np.zeros(d), np.eye(d), 3.0)


def _write_profile(folder, models_digest="0" * 16, threshold=0.4, band=(0.3, 0.5)):
    """A valid profile for the tiny models' shapes, made without fitting (no models load)."""
    rng = np.random.default_rng(0)
    heads = {n: Head(rng.normal(size=FEATURES), np.ones(FEATURES), rng.normal(size=FEATURES), 0.1)
             for n in MODEL_NAMES}
    checks = DomainChecks(16.0, 1.3, _gaussian(6), _gaussian(FEATURES * len(MODEL_NAMES)))
    config = EnsembleConfig({n: 1 / len(MODEL_NAMES) for n in MODEL_NAMES}, threshold, band)
    SiteProfile(FieldPart(models_digest, heads, config, checks, {"source": "test"})).save(folder)
    return folder


def _edit(folder, change, resign=False):
    """Apply ``change`` to the parsed profile.json and write it back, with a recomputed digest if ``resign``."""
    path = folder / PROFILE_JSON
    meta = json.loads(path.read_text())
    change(meta)
    if resign:
        meta[DIGEST_KEY] = meta_digest(meta)
    path.write_text(json.dumps(meta, indent=2))


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


# ---- A: the whole profile is digest-checked and range-checked ------------------------------------------------

def test_a_hand_edited_profile_is_refused_naming_the_digest(tmp_path, models_dir):
    profile = _write_profile(tmp_path / "site")
    assert load_profile(profile).fields.ensemble.threshold == 0.4
    text = (profile / PROFILE_JSON).read_text()
    (profile / PROFILE_JSON).write_text(text.replace('"threshold": 0.4', '"threshold": 7'))
    with pytest.raises(DomainError, match="profile.json does not match the digest recorded in it"):
        load_profile(profile)
    write_image(tmp_path / "in" / "a.png", seed=1)
    result = _invoke("predict", tmp_path / "in", "-o", tmp_path / "r.csv", "--models", models_dir, "--site", profile)
    assert result.exit_code == 2 and len(_error_lines(result.output)) == 1
    assert "does not match the digest" in result.output and not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("change, field", [
    (lambda m: m["fields"].update(threshold=7, review_band=[0.9, 0.1]), "threshold"),
    (lambda m: m["fields"].update(threshold=0.99, review_band=[0.9, 0.1]), "review_band"),
    (lambda m: m["fields"]["weights"].update(resnet50=-0.5), "weights"),
    (lambda m: m["fields"]["weights"].update(resnet50=float("nan")), "weights"),
    (lambda m: m["fields"]["weights"].pop("alexnet"), "weights"),
    (lambda m: m["fields"].update(threshold="0.5"), "threshold"),
    (lambda m: m["fields"].update(threshold=True), "threshold"),
    (lambda m: m["fields"].update(review_band=[0.5, 0.3]), "review_band"),
    (lambda m: m["fields"].update(models=["resnet50", "resnet50"]), "models"),
    (lambda m: m["fields"].update(models=["lenet"]), "models"),
    (lambda m: m["fields"].update(rbc_diameter=-3), "rbc_diameter"),
    (lambda m: m["fields"].update(scale_tolerance=0.5), "scale_tolerance"),
    (lambda m: m.update(arrays="../elsewhere.npz"), "arrays"),
    (lambda m: m.update(format=1), "format"),
    (lambda m: m.pop("fields"), "neither"),
])
def test_a_setting_out_of_range_is_refused_even_with_a_recomputed_digest(change, field, tmp_path):
    profile = _write_profile(tmp_path / "site")
    _edit(profile, change, resign=True)
    with pytest.raises(DomainError, match=field) as refused:
        load_profile(profile)
    assert str(profile) in str(refused.value)


def test_a_bad_allscan_site_is_refused_before_the_models_load_naming_the_variable(tmp_path, monkeypatch):
    from allscan.models.ensemble import Ensemble

    monkeypatch.setattr(Ensemble, "load", lambda *a, **k: pytest.fail("the models loaded before the profile"))
    monkeypatch.setenv("ALLSCAN_SITE", str(tmp_path / "nowhere"))
    with pytest.raises(DomainError, match=r"\$ALLSCAN_SITE"):
        allscan.load(tmp_path)
    profile = _write_profile(tmp_path / "site")
    (profile / PROFILE_JSON).write_text((profile / PROFILE_JSON).read_text().replace("0.4", "0.41"))
    monkeypatch.setenv("ALLSCAN_SITE", str(profile))
    with pytest.raises(DomainError, match=r"\(from \$ALLSCAN_SITE\).*does not match"):
        allscan.load(tmp_path)


_ODD_VALUES = [None, True, False, -1, 0, 1, 7, -0.25, 0.5, 0.999, 1e308, float("nan"), float("inf"), "", "0.5",
               "resnet50", [], [0.9, 0.1], [0.1, 0.9], [0.2, 0.4, 0.6], {}, {"resnet50": 1}, ["resnet50"]]


def _fuzz_edit(rng, meta):
    """One random edit of one field of a parsed profile.json, mostly of its field part: a replacement, a
    jitter, a removal."""
    meta = meta["fields"] if rng.random() < 0.8 else meta
    key = list(meta)[rng.integers(len(meta))]
    value, kind = meta[key], rng.integers(3)
    if kind == 0:
        meta[key] = _ODD_VALUES[rng.integers(len(_ODD_VALUES))]
    elif kind == 1:
        meta[key] = _jitter(rng, value)
    else:
        del meta[key]


def _jitter(rng, value):
    if isinstance(value, bool) or not isinstance(value, int | float | list | dict):
        return value
    if isinstance(value, list):
        return [_jitter(rng, v) for v in (value[::-1] if rng.random() < 0.3 else value)]
    if isinstance(value, dict):
        changed = dict(value)
        if changed:
            name = list(changed)[rng.integers(len(changed))]
            changed[name] = _jitter(rng, changed[name])
        return changed
    return float(value * rng.uniform(-1.5, 2.5) + rng.normal(0, 0.2))


def test_a_fuzzed_profile_is_refused_or_loads_within_range_never_silently_changed(tmp_path):
    """200 seeded edits of profile.json: as a hand edit (digest left) or re-signed (digest recomputed), and
    byte flips. A load either fails with DomainError or gives settings in range; one whose digest was
    left as written gives exactly the original settings."""
    original = _write_profile(tmp_path / "original")
    reference = load_profile(original).fields.ensemble
    rng = np.random.default_rng(2020)
    outcomes = {"refused": 0, "accepted": 0}
    for case in range(200):
        profile = tmp_path / f"case-{case}"
        shutil.copytree(original, profile)
        resign = bool(case % 2)
        if case % 5 == 4:  # a byte flip anywhere in the file
            data = bytearray((profile / PROFILE_JSON).read_bytes())
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
            (profile / PROFILE_JSON).write_bytes(bytes(data))
            resign = False
        else:
            _edit(profile, lambda meta: _fuzz_edit(rng, meta), resign)
        try:
            loaded = load_profile(profile).fields.ensemble
        except DomainError as refused:
            assert str(profile) in str(refused) and "\n" not in str(refused)
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        if not resign:
            assert loaded == reference, f"case {case}: an edit changed the settings silently"
        low, high = loaded.review_band
        assert 0 < loaded.threshold < 1 and 0 <= low <= loaded.threshold <= high <= 1, case
        assert set(loaded.weights) == set(MODEL_NAMES) and sum(loaded.weights.values()) > 0
        assert all(math.isfinite(w) and w >= 0 for w in loaded.weights.values()), case
    assert outcomes["refused"] > 100 and outcomes["accepted"] > 5, outcomes


# ---- E and F: adapt checks its images and --out before the models load ---------------------------------------

def _lab(root, all_count=5, normal_count=5):
    for label, count, nuclei in (("ALL", all_count, 4), ("normal", normal_count, 1)):
        for i in range(count):
            path = root / label / f"{label}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(disc_smear(16, (96, 96), seed=100 * nuclei + i, nuclei=nuclei)).save(path)
    return root


def _adapt_refused(tmp_path, lab, out, reason):
    """adapt exits 2 with one line holding ``reason``, fast, before TensorFlow loads."""
    code, lines, seconds, tensorflow = cli_process("adapt", lab, "--out", out, "--models", tmp_path / "no-models")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and reason in lines[0], lines
    assert not tensorflow and seconds < 5.0  # about 0.5 s here: the interpreter, typer and rich


def test_e_the_same_image_in_both_classes_is_refused(tmp_path):
    lab = _lab(tmp_path / "lab", 6, 6)
    for i in range(3):
        shutil.copy(lab / "ALL" / f"ALL-{i}.png", lab / "normal" / f"copied-{i}.png")
    _adapt_refused(tmp_path, lab, tmp_path / "site", "labelled both ways")
    assert not (tmp_path / "site").exists()


def test_e_a_link_loop_or_a_file_linked_twice_counts_once(tmp_path):
    from allscan.training.adapt import list_labelled

    lab = _lab(tmp_path / "lab", 5, 4)
    (lab / "normal" / "up").symlink_to("..", target_is_directory=True)  # normal/up/ALL/... would be normal
    (lab / "ALL" / "again.png").symlink_to("ALL-0.png")
    (lab / "ALL" / "twin").mkdir()
    shutil.copy(lab / "ALL" / "ALL-1.png", lab / "ALL" / "twin" / "copy.png")
    _adapt_refused(tmp_path, lab, tmp_path / "site", "found 5 ALL and 4 normal")
    _lab(lab, 5, 5)
    listed = list_labelled(lab)
    assert list(listed.counts()) == [5, 5]
    first = lab / "ALL" / "ALL-1.png"
    assert [(p.name, reason) for p, reason in listed.skipped] == [("copy.png", f"same image as {first}")]


@pytest.mark.parametrize("case", ["too few", "one class", "empty folders"])
def test_f_too_few_images_are_refused_before_the_models_load(case, tmp_path):
    lab = {"too few": lambda: _lab(tmp_path / "lab", 5, 4), "one class": lambda: _lab(tmp_path / "lab", 6, 0)}.get(
        case, lambda: tmp_path / "lab")()
    (lab / "ALL").mkdir(parents=True, exist_ok=True)
    (lab / "normal").mkdir(exist_ok=True)
    reason = "no images under" if case == "empty folders" else "at least 5"
    _adapt_refused(tmp_path, lab, tmp_path / "site", reason)


@pytest.mark.parametrize("case", ["out is a file", "folder not writable", "existing profile read-only"])
def test_f_an_unwritable_out_is_refused_before_the_models_load(case, tmp_path):
    lab = _lab(tmp_path / "lab")
    out = tmp_path / "site"
    if case == "out is a file":
        out.write_text("a file")
        context, reason = contextlib.nullcontext(), "is a file"
    elif case == "folder not writable":
        out.mkdir()
        context, reason = read_only(out), "cannot write in the folder of the site profile file"
    else:
        _write_profile(out)
        context, reason = read_only(out / PROFILE_JSON), "cannot replace the site profile file"
    with context:
        _adapt_refused(tmp_path, lab, out, reason)


# ---- G and J: the API takes arrays like files, a missing file as its own error row, and nothing fast ----------

@pytest.fixture(scope="module")
def screener(models_dir):
    return allscan.load(models_dir)


def test_g_arrays_under_64_px_are_error_rows_as_files_are(screener, tmp_path):
    rgb = smear(3, size=128)
    small = write_image(tmp_path / "small.png", seed=3, size=63)
    frame = screener.predict([rgb[:63, :63], rgb[:1, :1], rgb, small])
    assert list(frame["verdict"][:2]) == ["error", "error"] and frame.loc[2, "verdict"] in ("ALL", "normal")
    assert frame.loc[0, "error"] == frame.loc[3, "error"] == "image too small: 63x63 pixels (at least 64 a side)"
    assert frame.loc[1, "error"].startswith("image too small: 1x1") and frame["p_all"][:2].isna().all()


def test_j_a_missing_file_is_its_own_error_row_and_the_rest_is_scored(models_dir, tmp_path):
    good = write_image(tmp_path / "good.png", seed=4)
    frame = allscan.predict([good, "/missing.jpg", smear(5), tmp_path / "no-folder"], models=models_dir)
    assert list(frame["path"]) == [str(good), "/missing.jpg", "array-2", str(tmp_path / "no-folder")]
    assert list(frame["verdict"] == "error") == [False, True, False, True]
    assert "No such file" in frame.loc[1, "error"] and "No such file" in frame.loc[3, "error"]


def test_j_an_empty_call_returns_the_empty_frame_without_loading_models(tmp_path, monkeypatch):
    monkeypatch.setattr(allscan.api, "load", lambda *a, **k: pytest.fail("the models loaded for nothing"))
    (tmp_path / "empty").mkdir()
    started = time.monotonic()
    for call in ([], [tmp_path / "empty"]):
        frame = allscan.predict(call)
        assert tuple(frame.columns) == COLUMNS == tuple(allscan.COLUMNS) and len(frame) == 0
    assert time.monotonic() - started < 1.0


# ---- I: read_results names the file, row and column of what it refuses -----------------------------------------

@pytest.fixture(scope="module")
def results_csv(screener, tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    write_image(folder / "in" / "a.png", seed=1)
    (folder / "in" / "broken.png").write_text("not an image")
    out = folder / "r.csv"
    screener.predict([folder / "in"], out=out)
    return out


def _edited(results_csv, tmp_path, row, column, value):
    rows = list(csv.reader(results_csv.open(encoding="utf-8")))
    rows[row][COLUMNS.index(column)] = value
    path = tmp_path / "edited.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.mark.parametrize("column, value, reason", [
    ("p_all", "high", "'high' is not a number"),
    ("p_all", "7.5", "'7.5' is not a probability (0 to 1)"),
    ("p_all_alexnet", "-0.1", "'-0.1' is not a probability"),
    ("review", "yes", "'yes' is not true or false"),
    ("width", "wide", "'wide' is not a whole number"),
    ("agreement", "9", "9 is out of range (0 to 4)"),
    ("verdict", "maybe", "'maybe' is not one of"),
])
def test_i_a_bad_value_is_refused_naming_file_row_and_column(results_csv, tmp_path, column, value, reason):
    assert len(allscan.read_results(results_csv)) == 2
    edited = _edited(results_csv, tmp_path, 1, column, value)
    with pytest.raises(ResultsFileError) as refused:
        allscan.read_results(edited)
    assert isinstance(refused.value, ValueError)
    assert str(refused.value).startswith(f"{edited}, row 2, column {column}: {reason}")


@pytest.mark.parametrize("content", [b"%PDF-1.4 a report saved over the store", b""])
def test_i_a_store_that_is_not_one_is_refused_as_a_results_file_error(content, tmp_path):
    """A file named like a store that is not an SQLite database, or an SQLite database of another program,
    raised sqlite3.DatabaseError, not the ValueError the README promises."""
    import sqlite3

    store = tmp_path / "r.csv.allscan.sqlite"
    if content:
        store.write_bytes(content)
    else:
        sqlite3.connect(store).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(ResultsFileError, match="is not a readable allscan results store"):
        allscan.read_results(store)


def test_i_an_empty_file_or_columns_missing_or_reordered_are_refused_by_name(results_csv, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ResultsFileError, match=f"{empty} is empty"):
        allscan.read_results(empty)
    frame = pd.read_csv(results_csv, dtype=str, keep_default_na=False)
    frame.drop(columns=["agreement"]).to_csv(tmp_path / "dropped.csv", index=False)
    with pytest.raises(ResultsFileError, match="dropped.csv is not an allscan results file: missing columns agreement"):
        allscan.read_results(tmp_path / "dropped.csv")
    order = list(COLUMNS)
    order[6], order[7] = order[7], order[6]
    frame[order].to_csv(tmp_path / "swapped.csv", index=False)
    with pytest.raises(ResultsFileError, match="column 7 is review, expected p_all"):
        allscan.read_results(tmp_path / "swapped.csv")


def test_predict_refuses_a_bad_site_profile_from_the_variable_before_the_models_load(tmp_path, models_dir):
    """Row F: a bad ``$ALLSCAN_SITE`` is named and refused before TensorFlow loads (exit 2, one line)."""
    slides = tmp_path / "in"
    write_image(slides / "a.png")
    os.environ["ALLSCAN_SITE"] = str(tmp_path / "nowhere")
    try:
        code, lines, _, tensorflow = cli_process("predict", slides, "-o", tmp_path / "r.csv", "--models", models_dir)
    finally:
        del os.environ["ALLSCAN_SITE"]
    assert code == 2 and not tensorflow
    assert len(_error_lines("\n".join(lines))) == 1 and "$ALLSCAN_SITE" in lines[0] and "missing" in lines[0]
