"""Faults around heatmap figures: a watched folder that holds them, their stored paths, Ray reruns."""

import csv
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from typer.testing import CliRunner

from allscan.cli import app
from allscan.run.watch import WatchConfig, Watcher
from allscan.scoring.heatmaps import HeatmapOptions
from tests.utils import write_image

runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class _Recorder:
    def __init__(self):
        self.results = []

    def start(self, total):
        pass

    def result(self, result, skipped):
        self.results.append(result)


def _watch_until(watcher: Watcher, recorder: _Recorder, write, count: int, timeout: float = 60.0) -> None:
    """Run ``watcher`` on a thread, call ``write`` once it watches, and stop it once ``count`` results came (and
    a while after, for any extra one to show)."""
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        time.sleep(0.5)
        write()
        deadline = time.monotonic() + timeout
        while len(recorder.results) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # a figure taken for an image would settle and be scored by now
    finally:
        watcher.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_a_heatmaps_folder_in_the_watched_folder_hides_none_of_the_images_landing(ensemble, tmp_path):
    """`watch incoming --heatmaps incoming` (or a heatmaps folder inside it) left every image landing there
    unscored: the heatmaps folder was left out of the watch. Its images are scored, once; allscan's figures never,
    on arrival or on a restart's catch-up."""
    for name, maps in (("same", tmp_path / "same"), ("inside", tmp_path / "inside" / "P-01")):
        incoming, out = tmp_path / name, tmp_path / f"{name}.csv"
        recorder = _Recorder()
        config = WatchConfig(incoming, out, poll=True, settle=0.3, max_delay=0.2, poll_interval=0.05,
                             heatmaps=HeatmapOptions(maps, every=True))
        images = [incoming / f"{name}-a.png", incoming / "P-01" / f"{name}-b.png"]
        _watch_until(Watcher(config, ensemble, recorder),
                     recorder, lambda: [write_image(p, seed=i) for i, p in enumerate(images)], 2)
        assert sorted(r.path.name for r in recorder.results) == sorted(p.name for p in images), name
        rows = _rows(out)
        assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in images), name
        assert all(Path(r["heatmap"]).parent == maps and Path(r["heatmap"]).is_file() for r in rows), name
        restarted, caught_up = _Recorder(), []
        _watch_until(Watcher(config, ensemble, restarted, on_ready=caught_up.append), restarted, lambda: None, 0)
        assert caught_up == [0] and restarted.results == [], name  # the figures are no images to catch up on


def test_a_rerun_from_another_folder_keeps_the_figures_and_the_report_shows_them(models_dir, tmp_path, monkeypatch):
    """`--heatmaps hm` stored `hm/NAME.png`, relative to the first run's folder: rerun from another folder, the
    figures were not found from there and every row lost its heatmap (the report then showed none)."""
    for i in range(2):
        write_image(tmp_path / "slides" / f"s{i}.png", seed=i)
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
    args = ["predict", "../slides", "--models", str(models_dir), "--quiet"]
    monkeypatch.chdir(tmp_path / "A")
    first = runner.invoke(app, [*args, "--out", "r.csv", "--heatmaps", "hm", "--heatmaps-all"])
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path / "B")
    again = runner.invoke(app, [*args, "--out", "../A/r.csv", "--report", "report.html"])
    assert again.exit_code == 0, again.output
    figures = [Path(r["heatmap"]) for r in _rows(tmp_path / "A" / "r.csv")]
    assert len(figures) == 2 and all(f.is_absolute() and f.parent == tmp_path / "A" / "hm" and f.is_file()
                                     for f in figures)
    shown = re.findall(r'data-heatmap="([^"]*)"', (tmp_path / "B" / "report.html").read_text(encoding="utf-8"))
    assert sorted(os.path.normpath(tmp_path / "B" / unquote(link)) for link in shown) == sorted(map(str, figures))


def test_a_ray_rerun_adding_heatmaps_draws_the_figures_of_images_already_scored(ray_runtime, models_dir, tmp_path):
    """`--engine ray` rerun with `--heatmaps DIR` left every image scored before without a figure: the driver
    left out every stored path, while the local engine scores them again to draw them."""
    for i in range(3):
        write_image(tmp_path / "slides" / f"s{i}.png", seed=i)
    args = ["predict", str(tmp_path / "slides"), "--out", str(tmp_path / "r.csv"), "--models", str(models_dir),
            "--quiet", "--engine", "ray"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert [r["heatmap"] for r in _rows(tmp_path / "r.csv")] == ["", "", ""]
    again = runner.invoke(app, [*args, "--heatmaps", str(tmp_path / "hm"), "--heatmaps-all"])
    assert again.exit_code == 0, again.output
    figures = [Path(r["heatmap"]) for r in _rows(tmp_path / "r.csv")]
    assert len(figures) == 3 and all(f.parent == tmp_path / "hm" and f.is_file() for f in figures)
