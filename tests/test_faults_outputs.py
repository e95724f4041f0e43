"""Issue 20, rows B, C, D, H, K, L: outputs that block, get scored, or make noise; help text; watch counts."""

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from allscan.cli import app
from allscan.cli.display import WatchDisplay
from allscan.run.watch import WatchConfig, Watcher
from tests.utils import write_image

runner = CliRunner()
ALLSCAN = Path(sys.executable).with_name("allscan")  # the console script: `python -m` would put the cwd first


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _images(folder: Path, n: int) -> Path:
    for i in range(n):
        write_image(folder / f"field{i}.png", seed=i)
    return folder


def test_ray_workers_import_the_installed_allscan_whatever_the_cwd_holds(models_dir, tmp_path):
    """Row B: an ``allscan/`` folder in the current directory is not what Ray's workers import."""
    pytest.importorskip("ray")
    images, cwd = _images(tmp_path / "images", 3), tmp_path / "beside-a-clone"
    (cwd / "allscan").mkdir(parents=True)
    (cwd / "allscan" / "__init__.py").write_text('raise ImportError("not the installed allscan")\n')
    done = subprocess.run([ALLSCAN, "predict", images, "--out", "x.csv", "--engine", "ray", "--models", models_dir,
                           "--quiet"], cwd=cwd, capture_output=True, text=True, timeout=240)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert len(_rows(cwd / "x.csv")) == 3


def test_ray_error_lines_carry_no_ansi_codes():
    """Row B: Ray colours its errors; the one line allscan prints is plain text."""
    from allscan.run.engines.ray import _first_line

    assert _first_line(RuntimeError("\x1b[36mray::MapBatches(_prepare_batch)()\x1b[39m (pid=1)")) == \
        "ray::MapBatches(_prepare_batch)() (pid=1)"


def test_ctrl_c_with_ray_exits_130_with_one_line(models_dir, tmp_path):
    """Row H: Ctrl-C (SIGINT to the terminal's process group) before the first result."""
    pytest.importorskip("ray")
    images = _images(tmp_path / "images", 400)  # so many one-image batches that the run cannot end first
    child = subprocess.Popen([ALLSCAN, "predict", images, "--out", "r.csv", "--engine", "ray", "--models", models_dir,
                              "--batch-size", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _children(child.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # Ray's runtime is starting or up; its actors are still loading
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: results so far were written; rerun the same command to finish"]
    assert "Exception ignored" not in out + err


def _children(pid: int) -> str:
    tasks = Path(f"/proc/{pid}/task")
    return "".join((t / "children").read_text() for t in tasks.iterdir()) if tasks.exists() else ""


def test_a_file_name_too_long_for_its_heatmap_blocks_nothing(models_dir, tmp_path):
    """Row C: the heatmap's name is shortened, keeping its sha256 prefix; every output is written."""
    long_name = write_image(tmp_path / "inp" / ("a" * 246 + ".png"))
    write_image(tmp_path / "inp" / "short.png", seed=1)
    out = tmp_path / "o" / "r.xlsx"
    result = runner.invoke(app, ["predict", str(tmp_path / "inp"), "--out", str(out), "--heatmaps",
                                 str(tmp_path / "o" / "hm"), "--heatmaps-all", "--models", str(models_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    import allscan

    rows = allscan.read_results(out)
    figures = {Path(row["path"]).name: Path(row["heatmap"]) for _, row in rows.iterrows()}
    assert figures[long_name.name].is_file() and figures["short.png"].is_file()
    assert len(os.fsencode(figures[long_name.name].name)) <= 255
    sha = rows.set_index(rows["path"].map(lambda p: Path(p).name)).loc[long_name.name, "sha256"]
    assert figures[long_name.name].name.endswith(f"-{sha[:10]}.png")


def test_names_that_are_not_utf8_are_scored_and_written_as_escaped_text(models_dir, tmp_path):
    """A Latin-1 file and folder name (e.g. from an old share) ended the run with an internal error: the results
    store, CSV, workbook and reports could not hold it. Each output now shows its bytes as \\xNN, heatmaps are
    named so, the image is not its own duplicate, and a rerun finds it already scored."""
    slides = tmp_path / "slides"
    latin = os.fsdecode(b"caf\xe9")
    write_image(slides / latin / f"{latin}.png")
    write_image(slides / "plain.png", seed=1)
    out = tmp_path / "r.csv"
    args = ["predict", str(slides), "--out", str(out), "--models", str(models_dir), "--quiet", "--report",
            str(tmp_path / "r.html"), "--pdf", str(tmp_path / "r.pdf"), "--heatmaps", str(tmp_path / "hm"),
            "--heatmaps-all"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {row["file"]: row for row in _rows(out)}
    assert set(rows) == {"caf\\xe9.png", "plain.png"}
    row = rows["caf\\xe9.png"]
    assert row["path"] == f"{slides}/caf\\xe9/caf\\xe9.png" and row["specimen"] == "caf\\xe9"
    assert row["verdict"] != "error" and row["duplicate_of"] == "" and Path(row["heatmap"]).is_file()
    assert "caf\\xe9.png" in (tmp_path / "r.html").read_text(encoding="utf-8")
    again = runner.invoke(app, [*args[:4], "--out", str(tmp_path / "r.xlsx"), *args[6:]])
    assert again.exit_code == 0, again.output
    import allscan

    assert sorted(allscan.read_results(tmp_path / "r.xlsx")["file"]) == ["caf\\xe9.png", "plain.png"]
    rerun = runner.invoke(app, args[:6])
    assert rerun.exit_code == 0 and "2 images were already scored" in rerun.output


def test_a_command_line_naming_a_folder_that_is_not_utf8_leaves_a_workbook_excel_can_open(models_dir, tmp_path,
                                                                                          monkeypatch):
    """The Run sheet's command held the folder name's odd byte as an XML character reference that no XML reader
    accepts: the workbook was written, exit 0, and openpyxl (as Excel) refused to open it."""
    import openpyxl

    latin = tmp_path / os.fsdecode(b"caf\xe9")
    write_image(latin / "field.png")
    out = tmp_path / "r.xlsx"
    args = ["predict", str(latin), "--out", str(out), "--models", str(models_dir), "--quiet"]
    monkeypatch.setattr("sys.argv", ["allscan", *args])
    assert runner.invoke(app, args).exit_code == 0
    run = dict(row[:2] for row in openpyxl.load_workbook(out)["Run"].iter_rows(values_only=True) if row[0])
    assert "caf\\xe9" in run["command"]


def test_allscan_never_scores_its_own_figures(models_dir, tmp_path, monkeypatch):
    """Row D: heatmaps inside the input and explain's figure are not smears; explain writes into the cwd."""
    slides = _images(tmp_path / "slides", 2)
    first = runner.invoke(app, ["predict", str(slides), "--out", str(tmp_path / "a.csv"), "--heatmaps",
                                str(slides / "heatmaps"), "--heatmaps-all", "--models", str(models_dir), "--quiet"])
    assert first.exit_code == 0, first.output
    assert len(list((slides / "heatmaps").glob("*.png"))) == 2
    monkeypatch.chdir(tmp_path)
    explained = runner.invoke(app, ["explain", str(slides / "field0.png"), "--models", str(models_dir)])
    assert explained.exit_code == 0, explained.output
    assert (tmp_path / "field0-heatmap.png").is_file() and not (slides / "field0-heatmap.png").exists()
    (tmp_path / "field0-heatmap.png").rename(slides / "renamed-figure.png")  # a figure moved by hand
    second = runner.invoke(app, ["predict", str(slides), "--out", str(tmp_path / "b.csv"), "--models",
                                 str(models_dir), "--quiet"])
    assert second.exit_code == 0, second.output
    assert sorted(Path(r["path"]).name for r in _rows(tmp_path / "b.csv")) == ["field0.png", "field1.png"]


def test_help_shows_bracketed_text_and_no_flag_types(monkeypatch):
    """Row K: Rich markup does not eat ``[ray]`` or ``[default: …]``; flags have no ``<bool>``."""
    monkeypatch.setenv("COLUMNS", "250")
    predict = " ".join(runner.invoke(app, ["predict", "--help"]).output.split())
    assert 'pip install "allscan[ray]"' in predict
    assert "[default: start a local Ray runtime]" in predict and "[default: the shipped models/]" in predict
    explain = " ".join(runner.invoke(app, ["explain", "--help"]).output.split())
    assert "[default: ./IMAGE-heatmap.png, in the current folder]" in explain
    for command in (["--help"], ["predict", "--help"], ["watch", "--help"]):
        assert "<bool>" not in runner.invoke(app, command).output, command


def test_watch_counts_files_not_events_after_a_stalled_write(ensemble, tmp_path):
    """Row L: a file retried after a stalled write counts once, live as in the final CSV."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    _images(incoming, 2)
    data = (_images(tmp_path / "source", 3) / "field2.png").read_bytes()
    config = WatchConfig(incoming, out, settle=0.2, max_delay=0.1, poll_interval=0.05)
    watcher = Watcher(config, ensemble)
    display = WatchDisplay(Console(file=io.StringIO(), width=200), watcher.stats, quiet=True)
    watcher.observer = display
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        with open(incoming / "stalled.png", "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            deadline = time.monotonic() + 30
            while not any(r.error for r in watcher.stats.recent) and time.monotonic() < deadline:
                time.sleep(0.05)  # the stall outlasts the retries: an error row first
            handle.write(data[len(data) // 2:])
        deadline = time.monotonic() + 30
        while not any(r.path.name == "stalled.png" and not r.error for r in watcher.stats.recent):
            assert time.monotonic() < deadline, "the completed file was never scored"
            time.sleep(0.05)
    finally:
        watcher.stop()
        thread.join(timeout=30)
    assert len(_rows(out)) == 3
    assert watcher.stats.scored == 3
    head = str(display.summary_line())
    assert "error 0" in head
    assert sum(int(head.split(label)[1].split()[0]) for label in ("ALL ", "normal ")) == 3


def test_an_image_given_again_under_another_spelling_is_not_its_own_duplicate(ensemble, tmp_path, monkeypatch):
    """A rerun with the folder given as an absolute path marked every image a duplicate of itself (its relative
    spelling from the first run); a true copy stays marked."""
    from allscan.run.batch import run_batch

    write_image(tmp_path / "in" / "a.png", seed=1)
    write_image(tmp_path / "in" / "b.png", seed=2)
    write_image(tmp_path / "in" / "b-copy.png", seed=2)
    monkeypatch.chdir(tmp_path)
    run_batch([Path("in")], Path("r.csv"), ensemble)
    run_batch([tmp_path / "in"], Path("r.csv"), ensemble)
    rows = {r["file"]: r["duplicate_of"] for r in _rows(tmp_path / "r.csv")}
    assert rows == {"a.png": "", "b-copy.png": "", "b.png": "in/b-copy.png"}
