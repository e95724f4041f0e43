"""Fault hunt: the Ray engine against the local one, ``allscan explain`` on odd inputs, the white-cell outputs."""

import csv
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from allscan.cli import app
from allscan.paths import store_path_for
from tests.utils import write_image

ALLSCAN = Path(sys.executable).with_name("allscan")  # the console script: `python -m` would put the cwd first


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _stored(out: Path) -> int:
    try:
        with sqlite3.connect(f"{store_path_for(out).as_uri()}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def _ray_processes_of(pid: int) -> list[str]:
    """Processes of the Ray runtime a driver started: their command lines name its session, which ends in its pid."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and int(proc.name) != pid and f"_{pid}/" in cmdline and "/ray/session_" in cmdline:
            found.append(cmdline.replace("\0", " ")[:120])
    return found


def test_sigterm_during_a_ray_run_writes_what_was_scored_and_exits_130(models_dir, tmp_path):
    """``ray.init`` replaced allscan's SIGTERM handler with Ray's, which killed the runtime and exited at once: a
    service manager's stop (SIGTERM) ended a Ray run with exit code 134, no message and no results file."""
    pytest.importorskip("ray")
    images = tmp_path / "images"
    for i in range(300):  # so many one-image batches that the run cannot end first
        write_image(images / f"field{i}.png", seed=i)
    out = tmp_path / "r.csv"
    child = subprocess.Popen([ALLSCAN, "predict", images, "--out", out, "--engine", "ray", "--models", models_dir,
                              "--batch-size", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 180
    while child.poll() is None and _stored(out) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: results so far were written; rerun the same command to finish"]
    assert 2 <= len(_rows(out)) < 300
    time.sleep(2)
    assert _ray_processes_of(child.pid) == []


def test_explain_refuses_a_figure_allscan_wrote_as_predict_does(models_dir, tmp_path, monkeypatch):
    """``explain`` scored a heatmap figure from ``--heatmaps`` or an earlier ``explain`` as if it were a smear and
    printed a verdict for it (a figure of an ALL field read "normal"), where ``predict`` never scores one."""
    monkeypatch.chdir(tmp_path)
    image = write_image(tmp_path / "case.png", seed=4)
    first = CliRunner().invoke(app, ["explain", str(image), "--models", str(models_dir), "--no-cells"])
    assert first.exit_code == 0, first.output
    figure = tmp_path / "case-heatmap.png"
    result = CliRunner().invoke(app, ["explain", str(figure), "--models", str(models_dir), "--no-cells"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {figure} is a figure allscan wrote, not a smear: explain the image it was drawn from"]
    assert not (tmp_path / "case-heatmap-heatmap.png").exists()


def test_a_ray_address_where_nothing_listens_is_refused_at_once_leaving_no_trace(models_dir, tmp_path):
    """``--address HOST:PORT`` of a cluster that is down (or a typo) hung for about 13 minutes while Ray retried,
    printing a warning every 40 s and deaf to Ctrl-C, then left an empty results store behind."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    image = write_image(tmp_path / "case.png")
    out = tmp_path / "new" / "r.csv"
    done = subprocess.run([ALLSCAN, "predict", image, "--out", out, "--engine", "ray", "--address",
                           f"127.0.0.1:{port}", "--models", models_dir], capture_output=True, text=True, timeout=120,
                           check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: cannot reach Ray at 127.0.0.1:{port}: Connection refused"]
    assert not out.parent.exists()


def test_sigterm_waits_for_the_next_batch_only_where_a_python_handler_takes_it():
    """The CLI's SIGTERM handler runs between batches; a process that lets SIGTERM end it (the API's default) keeps
    that: a run does not swallow a service manager's stop."""
    pytest.importorskip("ray")
    from allscan.run.engines.ray import _interrupts_between_batches

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with _interrupts_between_batches():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        calls = []
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
        with _interrupts_between_batches() as interrupts:
            signal.raise_signal(signal.SIGTERM)
            assert calls == []
            interrupts.check()
            assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
