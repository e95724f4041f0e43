"""The Python API: DataFrames with the documented columns, for paths and arrays; reading results back."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import allscan
from allscan.results.types import COLUMNS
from tests.utils import smear, write_image


@pytest.fixture()
def slides(tmp_path):
    folder = tmp_path / "slides"
    for i in range(4):
        write_image(folder / f"field{i}.png", seed=i)
    write_image(folder / "=HYPERLINK(1).png", seed=7)
    (folder / "broken.jpg").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def screener(models_dir):
    return allscan.load(models_dir)


def test_import_is_light_and_predict_is_the_api_function():
    code = ("import sys, allscan; assert 'tensorflow' not in sys.modules and 'pandas' not in sys.modules;"
            "from allscan.run.job import Job; import allscan.api as api;"
            "assert allscan.predict is api.predict and allscan.load is api.load;"
            "assert 'tensorflow' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr


def test_predict_paths_returns_the_documented_columns_and_writes_nothing(slides, models_dir, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    frame = allscan.predict([slides], models=models_dir)
    assert sorted(tmp_path.rglob("*")) == before
    assert tuple(frame.columns) == COLUMNS == tuple(allscan.COLUMNS)
    assert len(frame) == 6
    assert frame["p_all"].dtype == "float64" and frame["width"].dtype == "Int64"
    assert frame["review"].dtype == "boolean"
    broken = frame.set_index("file").loc["broken.jpg"]
    assert broken["verdict"] == "error" and "not a recognised" in broken["error"] and pd.isna(broken["p_all"])
    scored = frame[frame["verdict"] != "error"]
    assert scored["p_all"].between(0, 1).all() and (scored["width"] == Image.open(slides / "field0.png").width).all()
    assert frame.loc[frame["file"] == "=HYPERLINK(1).png", "file"].size == 1


def test_screener_scores_arrays_like_the_files_they_came_from(slides, screener):
    rgb = np.asarray(Image.open(slides / "field1.png"))
    frame = screener.predict([rgb, slides / "field1.png", rgb.copy(), np.zeros((5, 5), np.float32)],
                             names=["cam/a", "cam/b", "cam/c"])
    assert tuple(frame.columns) == COLUMNS
    assert list(frame["path"]) == ["cam/a", str(slides / "field1.png"), "cam/b", "cam/c"]
    assert frame.loc[0, "p_all"] == pytest.approx(frame.loc[1, "p_all"], abs=1e-6)
    assert frame.loc[2, "duplicate_of"] == "cam/a" and frame.loc[0, "duplicate_of"] == ""
    assert frame.loc[3, "verdict"] == "error" and "uint8 (height, width, 3)" in frame.loc[3, "error"]
    assert len(frame.loc[0, "sha256"]) == 64 and frame.loc[0, "width"] == rgb.shape[1]


def test_screener_refuses_what_does_not_fit(screener, tmp_path):
    with pytest.raises(ValueError, match="names"):
        screener.predict([smear(1)], names=["a", "b"])
    with pytest.raises(ValueError, match="out="):
        screener.predict([smear(1)], out=tmp_path / "r.csv")
    with pytest.raises(FileNotFoundError):
        screener.predict([tmp_path / "nope"], out=tmp_path / "r.csv")  # as `allscan predict`: exit 2
    missing = screener.predict([tmp_path / "nope"])  # in memory, a missing path is its own error row
    assert missing.loc[0, "verdict"] == "error" and "No such file" in missing.loc[0, "error"]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_read_results_round_trips_the_file_and_its_store(slides, screener, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    frame = screener.predict([slides], out=out)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 6
    from_store = allscan.read_results(f"{out}.allscan.sqlite")
    pd.testing.assert_frame_equal(from_store, frame)
    from_file = allscan.read_results(out)
    probabilities = [c for c in COLUMNS if c.startswith("p_all")]
    pd.testing.assert_frame_equal(from_file, frame, atol=1e-4 if suffix == ".csv" else 0, check_exact=False)
    assert (from_file[probabilities].isna() == frame[probabilities].isna()).all().all()
    assert "=HYPERLINK(1).png" in set(from_file["file"])


def test_read_results_refuses_other_files(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an allscan results file"):
        allscan.read_results(tmp_path / "other.csv")
    (tmp_path / "r.txt").write_text("")
    with pytest.raises(ValueError, match="expected a .csv"):
        allscan.read_results(tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError):
        allscan.read_results(tmp_path / "missing.csv")


def test_out_refuses_what_the_cli_refuses_before_the_models_load(slides, models_dir, tmp_path, monkeypatch):
    """out= replaced a lab's own patients.csv with results, and out= with nothing to score emptied an earlier
    results file, where allscan predict refuses both (exit 2)."""
    from allscan.api import Screener

    patients = tmp_path / "patients.csv"
    patients.write_text("name,dob\nJohn Doe,1970-01-01\n")
    monkeypatch.setattr(Screener, "__init__", lambda *a: pytest.fail("the models must not load"))
    with pytest.raises(ValueError, match="is not an allscan results file"):
        allscan.predict([slides], models=models_dir, out=patients)
    assert patients.read_text() == "name,dob\nJohn Doe,1970-01-01\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images to score"):
        allscan.predict([tmp_path / "empty"], models=models_dir, out=tmp_path / "r.csv")
    with pytest.raises(ValueError, match="nothing to score"):
        allscan.predict([], models=models_dir, out=tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


def test_a_named_file_gets_its_row_whatever_its_name(slides, screener, tmp_path):
    """A JPEG without a suffix, a .heic photo and a hidden file, each named, got no row: the rows no longer
    lined up with the inputs."""
    jpeg = tmp_path / "noext"
    Image.open(slides / "field1.png").convert("RGB").save(jpeg, "JPEG")
    heic = tmp_path / "photo.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic")
    hidden = tmp_path / ".hidden.png"
    hidden.write_bytes((slides / "field2.png").read_bytes())
    frame = screener.predict([jpeg, heic, hidden])
    assert frame["file"].tolist() == ["noext", "photo.heic", ".hidden.png"]
    assert frame["verdict"].tolist()[0] != "error" and frame["verdict"].tolist()[2] != "error"
    assert frame.loc[1, "verdict"] == "error" and "not a recognised image file" in frame.loc[1, "error"]


@pytest.mark.parametrize("call, message", [
    (lambda s, d: allscan.load(models=d, rbc_diameter=0), "rbc_diameter must be"),
    (lambda s, d: allscan.load(models=d, rbc_diameter=float("nan")), "rbc_diameter must be"),
    (lambda s, d: s.predict([np.zeros((80, 80, 3), np.uint8)], batch_size=0), "batch_size and workers"),
    (lambda s, d: s.predict([np.zeros((80, 80, 3), np.uint8)], batch_size=-1), "batch_size and workers"),
])
def test_bad_numbers_are_refused_by_name(call, message, screener, models_dir):
    """rbc_diameter=0 ended predict in a ZeroDivisionError, batch_size=0 in 'range() arg 3 must not be zero' and
    -1 in numpy warnings and a KeyError."""
    with pytest.raises(ValueError, match=message):
        call(screener, models_dir)


def test_an_engine_that_cannot_run_is_a_value_error(tmp_path):
    from allscan.run.engines import EngineError, make_engine

    with pytest.raises(ValueError):
        make_engine("nope", 1)
    assert issubclass(EngineError, ValueError)


def test_two_runs_of_one_program_on_one_out_are_refused_as_two_processes_are(slides, screener, tmp_path):
    """Two threads with one out= raced through the store's schema steps: 'duplicate column name: scale'."""
    from allscan.results.lock import StoreBusy
    from allscan.results.store import ResultStore, store_path_for

    out = tmp_path / "r.csv"
    with ResultStore(store_path_for(out), "another-run"):  # a run of this program is writing it
        with pytest.raises(StoreBusy, match="being written by another run in this program"):
            screener.predict([slides], out=out)
    assert len(screener.predict([slides], out=out)) == 6  # and once it is done, the store is free


def test_a_call_with_nothing_to_score_still_refuses_what_load_refuses(tmp_path, monkeypatch):
    """It returned the empty frame for a runtime or a site profile that every later call with images refuses."""
    from allscan.models.manifest import ManifestError

    with pytest.raises(ValueError, match="unknown runtime 'gpu'"):
        allscan.predict([], runtime="gpu")
    with pytest.raises(ManifestError, match="site profile .*nowhere is missing"):
        allscan.predict([], site=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ALLSCAN_SITE", str(tmp_path / "gone"))
    with pytest.raises(ManifestError, match=r"\(from \$ALLSCAN_SITE\)"):
        allscan.predict([tmp_path / "empty"])
    monkeypatch.delenv("ALLSCAN_SITE")
    assert allscan.predict([]).empty
