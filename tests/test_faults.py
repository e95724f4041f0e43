"""Faults and hostile input: each gives one clear line and the documented exit code; nothing is lost or doubled.

Exit codes (README): 0 all scored, 1 some images failed, 2 usage error (nothing done), 3 an output or
the results store could not be written, 4 internal error, 130 interrupted.
"""

import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from allscan.results import schema as store_schema
from allscan.cli import app
from allscan.scoring.pipeline import Pipeline
from allscan.images import IMAGE_SUFFIXES, ImageError, decode_bytes, find_images
from allscan.models.manifest import ManifestError, load_manifest
from allscan.run.batch import run_batch
from allscan.run.job import prepare
from allscan.results.types import COLUMNS, ImageResult
from allscan.results.store import ResultStore, store_path_for
from allscan.results.lock import StoreBusy, StoreLock
from allscan.results.schema import StoreError
from tests.utils import cli_process, read_only, smear, write_image

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"


def _invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "warning:"))]


def _rows(out):
    import csv

    with open(out, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _slides(folder, n=6):
    for i in range(n):
        write_image(folder / f"field{i:02d}.png", seed=i)
    return folder


# ---- folder scans and symlinks ----------------------------------------------------------------------------


def test_symlink_loop_is_followed_once(tmp_path, ensemble):
    slides = tmp_path / "slides"
    write_image(slides / "a.png", seed=1)
    write_image(slides / "sub" / "b.png", seed=2)
    (slides / "sub" / "up").symlink_to("..")
    (slides / "sub" / "self").symlink_to(".")
    assert [p.relative_to(slides).as_posix() for p in find_images([slides])] == ["a.png", "sub/b.png"]
    run_batch([slides], tmp_path / "r.csv", ensemble)
    assert len(_rows(tmp_path / "r.csv")) == 2


def test_symlinked_folders_once_and_files_like_any_file(tmp_path):
    outside = tmp_path / "outside"
    write_image(outside / "o.png", seed=3)
    write_image(outside / "deep" / "d.png", seed=4)
    lone = write_image(tmp_path / "elsewhere" / "lone.png", seed=5)
    slides = tmp_path / "slides"
    write_image(slides / "real" / "r.png", seed=6)
    (slides / "a-link").symlink_to(slides / "real")  # sorts before the real folder it points at
    (slides / "first").symlink_to(outside)
    (slides / "second").symlink_to(outside)
    (slides / "third").symlink_to(outside / "deep")
    (slides / "lone.png").symlink_to(lone)
    found = [p.relative_to(slides).as_posix() for p in find_images([slides])]
    assert found == ["first/deep/d.png", "first/o.png", "lone.png", "real/r.png"]


def test_unreadable_subfolder_is_an_error_row_and_the_run_goes_on(tmp_path, ensemble, monkeypatch):
    slides = tmp_path / "slides"
    write_image(slides / "a.png", seed=1)
    write_image(slides / "locked" / "b.png", seed=2)
    listdir = Path.iterdir

    def iterdir(self):
        if self.name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return listdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)  # root reads any folder, so refuse this one here
    out = tmp_path / "r.csv"
    summary = run_batch([slides], out, ensemble)
    rows = {r["file"]: r for r in _rows(out)}
    assert set(rows) == {"a.png", "locked"} and rows["a.png"]["verdict"]
    assert rows["locked"]["error"] == "folder cannot be listed (Permission denied): none of its images were scored"
    assert summary.exit_code == 1


# ---- pre-flight: before the models load, one line, exit 2 --------------------------------------------------


def _preflight_case(case, tmp_path):
    slides = _slides(tmp_path / "slides", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    if case == "out is a folder":
        (tmp_path / "r.csv").mkdir()
        return contextlib.nullcontext(), [slides, "-o", tmp_path / "r.csv"], "is a folder"
    if case == "folder not writable":
        return read_only(locked), [slides, "-o", locked / "r.csv"], "cannot write in the folder of the output"
    if case == "existing file read-only":
        (locked / "r.xlsx").write_bytes(b"an old workbook")
        return read_only(locked / "r.xlsx"), [slides, "-o", locked / "r.xlsx"], "cannot replace the output"
    if case == "report folder not writable":
        return (read_only(locked), [slides, "-o", tmp_path / "r.csv", "--report", locked / "report.html"],
                "cannot write in the folder of the report")
    assert case == "heatmaps is a file"
    (tmp_path / "maps").write_text("a file")
    return contextlib.nullcontext(), [slides, "-o", tmp_path / "r.csv", "--heatmaps", tmp_path / "maps"], "is a file"


@pytest.mark.parametrize("case", ["out is a folder", "folder not writable", "existing file read-only",
                                  "report folder not writable", "heatmaps is a file"])
def test_preflight_refuses_before_models_load(case, tmp_path, models_dir):
    context, args, reason = _preflight_case(case, tmp_path)
    with context:
        code, lines, seconds, tf_loaded = cli_process("predict", *args, "--models", models_dir)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:") and reason in lines[0], lines
    assert not tf_loaded, "the check must come before TensorFlow and the models load"
    assert seconds < 3.0  # about 0.3 s here: the interpreter, typer and rich; never TensorFlow
    assert not (tmp_path / "r.csv.allscan.sqlite").exists()



@pytest.mark.parametrize("clash, expected", [
    (["--report", "r.csv"], "the output and the report are both"),
    (["--pdf", "r.csv.allscan.sqlite"], "the results store and the PDF report are both"),
    (["--report", "r.csv.specimens.csv"], "the specimens table and the report are both"),
    (["--report", "r.html", "--pdf", "r.html"], "the report and the PDF report are both"),
    (["--cells-geojson", "r.csv"], "the output and the cells GeoJSON folder are both"),
    (["--heatmaps", "maps", "--cells-geojson", "maps/../maps"], "the heatmaps folder and the cells GeoJSON folder"),
])
def test_two_outputs_on_one_path_are_refused_before_anything_is_written(clash, expected, tmp_path, models_dir):
    """--report given --out's name made the report replace the results (and --pdf the store) with exit 0;
    --cells-geojson given it made a folder of that name, and every rerun failed."""
    slides = _slides(tmp_path / "slides", 1)
    clash = [arg if arg.startswith("--") else tmp_path / arg for arg in clash]
    code, lines, _, tf_loaded = cli_process("predict", slides, "-o", tmp_path / "r.csv", *clash,
                                            "--models", models_dir)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not tf_loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slides"]  # nothing made, not even a folder


def test_long_error_stays_on_one_line(tmp_path, models_dir):
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / "results.csv"
    deep.mkdir(parents=True)
    result = _invoke("predict", _slides(tmp_path / "s", 1), "-o", deep, "--models", models_dir)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(deep) in result.output


# ---- corrupt results store ----------------------------------------------------------------------------------


def _truncated_store(tmp_path, models_dir):
    out = tmp_path / "r.csv"
    assert _invoke("predict", _slides(tmp_path / "slides", 30), "-o", out, "--models", models_dir).exit_code == 0
    store = store_path_for(out)
    data = store.read_bytes()
    assert len(data) > 3 * 4096
    store.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "zeroed pages"])
def test_corrupt_store_is_moved_aside_and_the_run_goes_on(damage, tmp_path, models_dir):
    if damage == "truncated":
        out = _truncated_store(tmp_path, models_dir)
    else:
        out = tmp_path / "r.csv"
        _slides(tmp_path / "slides", 30)
        store = store_path_for(out)
        if damage == "random bytes":
            store.write_bytes(random.Random(1).randbytes(12_288))
        else:
            assert _invoke("predict", tmp_path / "slides", "-o", out, "--models", models_dir).exit_code == 0
            data = bytearray(store.read_bytes())
            data[4096:8192] = bytes(4096)
            store.write_bytes(bytes(data))
    damaged = store_path_for(out).read_bytes()
    result = _invoke("predict", tmp_path / "slides", "-o", out, "--models", models_dir, "--quiet")
    assert result.exit_code == 0, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "was corrupt; moved it to" in lines[0], result.output
    moved = list(tmp_path.glob("r.csv.allscan.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == damaged and str(moved[0]) in lines[0]
    rows = _rows(out)
    assert len(rows) == 30 and all(r["verdict"] != "error" for r in rows)


def test_store_opened_by_the_library_is_moved_aside_too(tmp_path):
    store = tmp_path / "r.csv.allscan.sqlite"
    store.write_bytes(b"not a database at all, " * 100)
    with ResultStore(store, "digest") as opened:
        assert opened.moved_aside is not None and opened.moved_aside.read_bytes().startswith(b"not a database")
        assert list(opened.results()) == []


# ---- disk full and permission lost during a run: exit 3, one line, stored results kept ---------------------


def _full_after_a_few_pages(monkeypatch):
    """The store's database cannot grow past a few pages: SQLite reports 'database or disk is full'."""
    original = store_schema.open_database

    def limited(path, **kwargs):
        db, moved = original(path, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 2}")
        return db, moved

    monkeypatch.setattr("allscan.results.store.open_database", limited)


def test_disk_full_while_writing_the_store(tmp_path, models_dir, monkeypatch):
    slides, out = _slides(tmp_path / "slides", 60), tmp_path / "r.csv"
    _full_after_a_few_pages(monkeypatch)
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--batch-size", "2", "--quiet")
    assert result.exit_code == 3, result.output
    (line,) = _error_lines(result.output)
    assert f"cannot write {store_path_for(out)}: database or disk is full" in line
    assert "rerun the same command to finish" in line
    stored = sqlite3.connect(store_path_for(out)).execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert 0 < stored < 60
    monkeypatch.undo()
    again = _invoke("predict", slides, "-o", out, "--models", models_dir, "--batch-size", "2")
    assert again.exit_code == 0, again.output
    assert f"{stored} images were already scored" in again.output
    assert sorted(r["file"] for r in _rows(out)) == [f"field{i:02d}.png" for i in range(60)]


@pytest.mark.parametrize("fault", ["disk full", "permission lost"])
def test_failure_while_writing_the_results_file(fault, tmp_path, models_dir, monkeypatch):
    slides, out = _slides(tmp_path / "slides", 4), tmp_path / "r.csv"
    previous = ",".join(COLUMNS) + "\n/slides/old.png,old.png\n"
    out.write_text(previous)
    if fault == "disk full":
        def fail(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fail)
        cause = "No space left on device"
    else:
        def fail(*args):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(os, "replace", fail)
        cause = "Permission denied"
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--quiet")
    assert result.exit_code == 3, result.output
    (line,) = _error_lines(result.output)
    assert f"cannot write {out}: {cause}" in line
    assert out.read_text() == previous  # atomic: the old file stays whole
    assert [p.name for p in tmp_path.iterdir() if "allscan-tmp" in p.name] == []
    monkeypatch.undo()
    again = _invoke("predict", slides, "-o", out, "--models", models_dir)
    assert again.exit_code == 0 and "4 images were already scored" in again.output
    assert len(_rows(out)) == 4


@pytest.fixture()
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_real_full_disk(tmp_path, small_disk, models_dir):
    slides, out = _slides(tmp_path / "slides", 60), small_disk / "r.csv"
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--batch-size", "1", "--quiet")
    assert result.exit_code == 3, result.output
    (line,) = _error_lines(result.output)
    assert f"cannot write {store_path_for(out)}" in line and "full" in line
    stored = sqlite3.connect(store_path_for(out)).execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert 0 < stored < 60
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = _invoke("predict", slides, "-o", out, "--models", models_dir, "--batch-size", "1")
    assert again.exit_code == 0, again.output
    assert len(_rows(out)) == 60


# ---- the models manifest ------------------------------------------------------------------------------------


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    text = edit(data)
    path.write_text(text if isinstance(text, str) else json.dumps(data))


def _duplicate_key(data):
    entry = json.dumps(data["models"]["alexnet"])
    return json.dumps(data).replace('"models": {', f'"models": {{"alexnet": {entry}, ', 1)


def _same_file(data):
    data["models"]["vgg16"] = {**data["models"]["alexnet"], "name": "vgg16"}


def _unknown_name(data):
    data["models"]["vgg17"] = data["models"].pop("vgg16")
    data["ensemble"]["weights"]["vgg17"] = data["ensemble"]["weights"].pop("vgg16")


def _unknown_weight(data):
    data["ensemble"]["weights"]["squeezenet"] = 0.5


def _negative_weight(data):
    data["ensemble"]["weights"]["alexnet"] = -1


@pytest.mark.parametrize(("edit", "reason"), [
    (_duplicate_key, "key 'alexnet' appears twice"),
    (_same_file, "have the same file alexnet.keras"),
    (_unknown_name, "unknown models ['vgg17']"),
    (_unknown_weight, "weights for unlisted models ['squeezenet']"),
    (_negative_weight, "weights must be finite and not negative"),
], ids=["duplicate key", "same file twice", "unknown name", "weight for unknown model", "negative weight"])
def test_bad_manifest_is_refused(edit, reason, models_copy, tmp_path):
    _edit_manifest(models_copy, edit)
    with pytest.raises(ManifestError, match=re.escape(reason)):
        load_manifest(models_copy)
    result = _invoke("predict", _slides(tmp_path / "s", 1), "-o", tmp_path / "r.csv", "--models", models_copy)
    assert result.exit_code == 2 and len(_error_lines(result.output)) == 1 and reason in result.output


def test_bad_manifest_is_refused_before_tensorflow_loads(models_copy, tmp_path):
    _edit_manifest(models_copy, _negative_weight)
    code, lines, _, tensorflow = cli_process("predict", _slides(tmp_path / "s", 1), "-o", tmp_path / "r.csv",
                                              "--models", models_copy)
    assert code == 2 and len(lines) == 1 and "weights must be finite" in lines[0]
    assert not tensorflow


def test_same_checksum_under_another_file_is_refused(models_copy):
    shutil.copy(models_copy / "alexnet.keras", models_copy / "alexnet-copy.keras")
    _edit_manifest(models_copy, lambda d: d["models"].__setitem__(
        "vgg16", {**d["models"]["alexnet"], "name": "vgg16", "file": "alexnet-copy.keras"}))
    with pytest.raises(ManifestError, match="have the same sha256"):
        load_manifest(models_copy)


# ---- images too small to call -------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "scored"), [(1, 1, False), (63, 300, False), (300, 63, False),
                                                         (64, 64, True)])
def test_images_under_64_px_a_side_are_error_rows(width, height, scored, tmp_path, ensemble):
    image = Image.fromarray(smear(1, size=300)[:height, :width])
    image.save(tmp_path / "in.png")
    run_batch([tmp_path / "in.png"], tmp_path / "r.csv", ensemble)
    (row,) = _rows(tmp_path / "r.csv")
    if scored:
        assert row["verdict"] in ("ALL", "normal") and row["error"] == ""
    else:
        assert row["verdict"] == "error" and row["p_all"] == ""
        assert row["error"] == f"image too small: {width}x{height} pixels (at least 64 a side)"


# ---- one writer per results store ---------------------------------------------------------------------------


@contextlib.contextmanager
def _lock_held_elsewhere(store: Path):
    """Another process holding ``store``'s writer lock while the block runs; yields that process."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from allscan.results.lock import StoreLock; "
         f"StoreLock({str(store)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_is_refused_naming_the_first(tmp_path, models_dir):
    slides, out = _slides(tmp_path / "slides", 2), tmp_path / "r.csv"
    with _lock_held_elsewhere(store_path_for(out)) as holder:
        result = _invoke("predict", slides, "-o", out, "--models", models_dir)
        assert result.exit_code == 2
        (line,) = _error_lines(result.output)
        assert f"is in use by another allscan (pid {holder.pid} on" in line
        assert not out.exists() and not store_path_for(out).exists()
    assert _invoke("predict", slides, "-o", out, "--models", models_dir).exit_code == 0  # no stale lock


def test_lock_is_shared_within_one_process_by_one_writer(tmp_path):
    store = tmp_path / "r.csv.allscan.sqlite"
    with StoreLock(store), ResultStore(store, "d"), ResultStore(store, "d", writer=False):
        with pytest.raises(StoreBusy, match="another run in this program"):
            ResultStore(store, "d")
    with StoreLock(store), ResultStore(store, "d"):  # all released: it can be taken again
        pass


# ---- schema version and migrations --------------------------------------------------------------------------


def _fixture_copy(tmp_path):
    target = tmp_path / "old.csv.allscan.sqlite"
    shutil.copy(FIXTURES / "store-0.1.0.sqlite", target)
    return target


def test_store_written_by_allscan_0_1_0_opens_and_migrates(tmp_path):
    store = _fixture_copy(tmp_path)
    raw = sqlite3.connect(store)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    (digest,) = raw.execute("SELECT DISTINCT digest FROM files").fetchone()
    raw.close()
    with ResultStore(store, digest) as opened:
        rows = {r.path.as_posix(): r for r in opened.results()}
        assert sorted(rows) == ["slides/broken.png", "slides/copy-of-field1.png", "slides/day2/field0.jpg",
                                "slides/field0.png", "slides/field1.png", "slides/field2.png"]
        assert rows["slides/broken.png"].error == "not a recognised image file"
        assert rows["slides/field1.png"].duplicate_of == "slides/copy-of-field1.png"
        assert rows["slides/field0.png"].score.p_all == pytest.approx(0.7603267133235931)
        assert opened.score_for(rows["slides/field2.png"].sha256).verdict == "ALL"
        opened.add([ImageResult(Path("slides/new.png"), "abc", error="image too small: 1x1 pixels")])
        assert len(list(opened.results())) == 7
    version = sqlite3.connect(store).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(store_schema.MIGRATIONS) == store_schema.schema_version()


def test_a_new_migration_step_is_applied_in_place(tmp_path, monkeypatch):
    """How the next schema change lands: one step appended, applied to stores of every earlier version."""
    steps = [*store_schema.MIGRATIONS, "ALTER TABLE files ADD COLUMN scale REAL",
             lambda db: db.execute("UPDATE files SET scale = 1.0")]
    monkeypatch.setattr(store_schema, "MIGRATIONS", steps)
    old, fresh = _fixture_copy(tmp_path), tmp_path / "fresh.allscan.sqlite"
    for store in (old, fresh):
        ResultStore(store, "d").close()
        db = sqlite3.connect(store)
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(steps)
        assert "scale" in [c[1] for c in db.execute("PRAGMA table_info(files)")]
    assert sqlite3.connect(old).execute("SELECT COUNT(*), MIN(scale) FROM files").fetchone() == (6, 1.0)


def test_a_failing_step_leaves_the_store_at_the_last_whole_step(tmp_path, monkeypatch):
    def broken(db):
        db.execute("ALTER TABLE files ADD COLUMN half_done REAL")
        raise RuntimeError("power cut")

    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, broken])
    store = _fixture_copy(tmp_path)
    with pytest.raises(RuntimeError):
        ResultStore(store, "d")
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_schema.MIGRATIONS) - 1
    assert "half_done" not in [c[1] for c in db.execute("PRAGMA table_info(files)")]


def test_store_from_a_newer_allscan_is_refused(tmp_path, models_dir):
    out = tmp_path / "r.csv"
    db = sqlite3.connect(store_path_for(out))
    db.execute(f"PRAGMA user_version = {store_schema.schema_version() + 5}")
    db.close()
    with pytest.raises(StoreError, match="written by a newer allscan"):
        ResultStore(store_path_for(out), "d")
    result = _invoke("predict", _slides(tmp_path / "s", 1), "-o", out, "--models", models_dir)
    assert result.exit_code == 2 and "written by a newer allscan" in result.output


# ---- watch says when it is ready ----------------------------------------------------------------------------


def test_watch_quiet_prints_one_ready_line(tmp_path, models_dir):
    incoming, out = _slides(tmp_path / "incoming", 2), tmp_path / "r.csv"

    def stop_when_caught_up():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.Error):
                if sqlite3.connect(store_path_for(out)).execute("SELECT COUNT(*) FROM files").fetchone()[0] == 2:
                    break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    stopper = threading.Thread(target=stop_when_caught_up)
    stopper.start()
    try:
        result = _invoke("watch", incoming, "-o", out, "--models", models_dir, "--quiet", "--settle", "0.2")
    finally:
        stopper.join()
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"ready: watching {incoming} → {out} with 4 models (resnet50, efficientnet_b3, alexnet,"
                        " vgg16); 2 images to catch up; Ctrl-C to stop")
    assert len(lines) == 3  # then one line per image


# ---- no traceback for anything ------------------------------------------------------------------------------


def test_unexpected_failure_is_one_line_and_exit_4(tmp_path, models_dir, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr("allscan.run.batch.find_images", bug)
    args = ("predict", _slides(tmp_path / "s", 1), "-o", tmp_path / "r.csv", "--models", models_dir)
    result = _invoke(*args)
    assert result.exit_code == 4
    (line,) = _error_lines(result.output)
    assert "internal error (RuntimeError: something nobody expected)" in line and "ALLSCAN_DEBUG=1" in line
    debug = _invoke(*args, env={"ALLSCAN_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)  # the traceback is there for whoever asks


def test_ctrl_c_while_models_load_exits_130(tmp_path, models_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("allscan.models.ensemble.Ensemble.load", interrupted)
    result = _invoke("predict", _slides(tmp_path / "s", 1), "-o", tmp_path / "r.csv", "--models", models_dir)
    assert result.exit_code == 130 and _error_lines(result.output) == ["error: interrupted"]


# ---- fuzz: mutated image files --------------------------------------------------------------------------------

_FUZZ_FILES = 300


def _encoded(fmt, seed):
    buffer = io.BytesIO()
    Image.fromarray(smear(seed, size=96)).save(buffer, format=fmt)
    return buffer.getvalue()


def _mutants(seed, count):
    """``count`` mutated image files: bit flips, truncations, header swaps, spliced and overwritten runs."""
    rng = random.Random(seed)
    bases = [_encoded(fmt, i) for i, fmt in enumerate(("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "DDS"))]
    for _ in range(count):
        data = bytearray(rng.choice(bases))
        kind = rng.choice(("flip", "flip", "truncate", "header", "header", "splice", "overwrite"))
        if kind == "flip":
            for _ in range(rng.randint(1, 24)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[: rng.randrange(len(data))]
        elif kind == "header":
            other = rng.choice(bases)
            n = rng.randint(4, 128)
            data[:n] = other[:n]
        elif kind == "splice":
            other = rng.choice(bases)
            start = rng.randrange(len(other))
            at = rng.randrange(len(data))
            data[at:at] = other[start : start + rng.randint(1, 512)]
        else:
            start = rng.randrange(len(data))
            data[start : start + rng.randint(1, 256)] = bytes([rng.choice((0, 255))]) * rng.randint(1, 256)
        yield kind, bytes(data)


def test_fuzzed_images_each_become_a_result_or_an_error_row(tmp_path, ensemble):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    suffixes = sorted(IMAGE_SUFFIXES)
    escapes = []
    for i, (kind, data) in enumerate(_mutants(seed=2024, count=_FUZZ_FILES)):
        path = folder / f"m{i:03d}-{kind}{suffixes[i % len(suffixes)]}"
        path.write_bytes(data)
        try:
            prepare(path, Pipeline(ensemble).maker, frozenset())
        except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
            escapes.append(f"{path.name}: {type(exc).__name__}: {exc}")
    assert escapes == []
    out = tmp_path / "fuzz.csv"
    summary = run_batch([folder], out, ensemble)
    rows = _rows(out)
    scored = [r for r in rows if r["verdict"] in ("ALL", "normal") and r["p_all"] and not r["error"]]
    errors = [r for r in rows if r["verdict"] == "error" and r["error"] and not r["p_all"]]
    print(f"fuzz: {_FUZZ_FILES} files, {len(scored)} result rows, {len(errors)} error rows, {len(escapes)} escapes")
    assert len(rows) == _FUZZ_FILES and len(scored) + len(errors) == _FUZZ_FILES
    assert summary.counts.errors == len(errors) and 0 < len(errors) < _FUZZ_FILES


def test_dds_header_with_unknown_pixel_format_is_an_error(tmp_path):
    """Found by the fuzz test: Pillow's DDS reader raised NotImplementedError, which escaped the decoder."""
    data = bytearray(_encoded("DDS", 0))
    data[80:84] = bytes(4)  # DDS_PIXELFORMAT.dwFlags: no known format
    with pytest.raises(ImageError, match="unreadable image: NotImplementedError"):
        decode_bytes(bytes(data), tmp_path / "x.png")


def test_corrupt_compressed_tiffs_print_nothing_on_the_terminal(capfd, tmp_path):
    """libtiff's own handlers printed "Using code not yet in table." etc. to stderr, across the live display."""
    buffer = io.BytesIO()
    Image.fromarray(smear(1, size=128)).save(buffer, format="TIFF", compression="tiff_lzw")
    rng, outcomes = random.Random(1), set()
    for _ in range(40):
        data = bytearray(buffer.getvalue())
        for _ in range(5):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        try:
            decode_bytes(bytes(data), tmp_path / "x.tif")
            outcomes.add("decoded")
        except ImageError:
            outcomes.add("error")
    captured = capfd.readouterr()
    assert "error" in outcomes
    assert captured.err == "" and captured.out == ""


def test_a_reader_opens_the_store_beside_a_running_writer(tmp_path):
    store = tmp_path / "r.csv.allscan.sqlite"
    with _lock_held_elsewhere(store), ResultStore(store, "d", writer=False) as reader:
        assert list(reader.results()) == []
    store.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="is corrupt"):
        ResultStore(store, "d", writer=False)
    assert store.read_bytes() == b"garbage" * 1000  # a reader never moves a store
