"""allscan watch with a real filesystem observer on a temporary folder."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest
from openpyxl import load_workbook

from allscan.scoring.pipeline import as_pipeline
from allscan.results.store import ResultStore, store_path_for
from tests.utils import WatchThread, jpeg_bytes, write_image


class Recorder:
    def __init__(self):
        self.results = []

    def start(self, total):
        pass

    def result(self, result, skipped):
        self.results.append((result, skipped))


class Running(WatchThread):
    """A watcher running on a thread for the duration of a ``with`` block, its results recorded."""

    def __init__(self, ensemble, folder, out, **kw):
        self.recorder = Recorder()
        super().__init__(ensemble, folder, out, self.recorder, **kw)

    def wait_for(self, n, timeout=30.0):
        deadline = time.monotonic() + timeout
        while len(self.recorder.results) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.recorder.results) >= n, f"only {len(self.recorder.results)} of {n} results"
        time.sleep(0.3)  # anything extra would show up now


def _rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_by_one_and_burst_each_get_exactly_one_row(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out) as run:
        for i in range(3):
            write_image(incoming / f"single{i}.png", seed=i)
            run.wait_for(i + 1)
        for i in range(8):
            write_image(incoming / "burst" / f"b{i}.png", seed=100 + i)
        run.wait_for(11)
        # Rows are appended and flushed as they are stored, before the watch stops.
        assert len(_rows(out)) == 11
    rows = _rows(out)
    assert len(rows) == 11 and len({r["path"] for r in rows}) == 11
    assert len(run.recorder.results) == 11


def test_slow_chunked_write_is_scored_once_when_complete(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    data = jpeg_bytes(seed=7, size=96)
    target = incoming / "slow.jpg"
    with Running(ensemble, incoming, out, settle=0.6) as run:
        with open(target, "wb") as handle:
            for start in range(0, len(data), len(data) // 6 + 1):
                handle.write(data[start : start + len(data) // 6 + 1])
                handle.flush()
                time.sleep(0.25)
        run.wait_for(1)
        time.sleep(1.0)
    assert len(run.recorder.results) == 1
    (result, _), = run.recorder.results
    assert result.error == "" and result.width == 96
    import hashlib

    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_a_write_that_stalls_more_often_than_the_retries_is_scored_not_moved_to_error(ensemble, tmp_path):
    """A copy over a slow share paused longer than the settle time more than three times: each pause failed to
    decode, the retries ran out, the half-written file got an error row and --move-to put it in error/."""
    incoming, out, done = tmp_path / "incoming", tmp_path / "results.csv", tmp_path / "done"
    incoming.mkdir()
    data = jpeg_bytes(seed=8, size=96)
    step = len(data) // 6 + 1
    with Running(ensemble, incoming, out, settle=0.2, move_to=done) as run:
        with open(incoming / "slow.jpg", "wb") as handle:
            for start in range(0, len(data), step):
                handle.write(data[start:start + step])
                handle.flush()
                time.sleep(0.7)  # longer than the settle time: each pause is tried, and fails
        run.wait_for(1)
    assert [r.error for r, _ in run.recorder.results] == [""]
    assert [p.parent.name for p in done.rglob("slow.jpg")] != ["error"]


def test_restart_scores_only_new_images_and_marks_renamed_copies(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    for i in range(3):
        write_image(incoming / f"old{i}.png", seed=i)
    with Running(ensemble, incoming, out) as first:
        first.wait_for(3)  # catch-up pass
    for i in range(2):
        write_image(incoming / f"new{i}.png", seed=50 + i)
    shutil.copy(incoming / "old0.png", incoming / "renamed-copy.png")
    with Running(ensemble, incoming, out) as second:
        second.wait_for(3)
    assert sorted(r.path.name for r, _ in second.recorder.results) == ["new0.png", "new1.png", "renamed-copy.png"]
    copy, skipped = next((r, s) for r, s in second.recorder.results if r.path.name == "renamed-copy.png")
    assert skipped and copy.duplicate_of == str(incoming / "old0.png")
    rows = {r["file"]: r for r in _rows(out)}
    assert len(rows) == 6
    assert rows["renamed-copy.png"]["duplicate_of"] == str(incoming / "old0.png")
    assert rows["renamed-copy.png"]["p_all"] == rows["old0.png"]["p_all"]


def test_restart_with_the_folder_spelt_otherwise_scores_nothing_again(ensemble, tmp_path, monkeypatch):
    """Restarting with the folder given absolute after relative gave every image a second row (a duplicate of
    itself), and its specimen twice the images."""
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        write_image(tmp_path / "incoming" / "P1" / f"f{i}.png", seed=i)
    with Running(ensemble, Path("incoming"), Path("results.csv")) as first:
        first.wait_for(2)
    with Running(ensemble, tmp_path / "incoming", tmp_path / "results.csv") as second:
        time.sleep(1.0)
    assert second.recorder.results == []
    rows = _rows(tmp_path / "results.csv")
    assert len(rows) == 2 and not any(r["duplicate_of"] for r in rows)


def test_an_image_replaced_while_no_watch_ran_is_scored_again(ensemble, tmp_path):
    """A field replaced under the same name between two watches kept its old result: catch-up looked for a row
    under that name only."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    write_image(incoming / "Image001.png", seed=1)
    with Running(ensemble, incoming, out) as first:
        first.wait_for(1)
    time.sleep(2.1)  # rows are recorded to the second
    write_image(incoming / "Image001.png", seed=2)
    with Running(ensemble, incoming, out) as second:
        second.wait_for(1)
    (old, _), (new, _) = first.recorder.results[0], second.recorder.results[0]
    assert new.path.name == "Image001.png" and new.sha256 != old.sha256
    assert [r["sha256"] for r in _rows(out)] == [new.sha256]


def test_images_in_hidden_folders_are_not_watched(ensemble, tmp_path):
    """A file deleted to the desktop's trash inside the watched folder (.Trash-1000) got a row, which catch-up
    and predict never give it."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out) as run:
        write_image(incoming / ".Trash-1000" / "files" / "deleted.png", seed=1)
        write_image(incoming / "kept.png", seed=2)
        run.wait_for(1)
        time.sleep(1.0)
    assert [r.path.name for r, _ in run.recorder.results] == ["kept.png"]


def test_a_csv_watch_keeps_its_specimens_and_cell_tables_current(ensemble, tmp_path):
    """With a CSV output the specimens table, cell table and run metadata stayed empty until the watch stopped."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out, xlsx_every=0.2) as run:
        write_image(incoming / "P1" / "a.png", seed=1)
        run.wait_for(1)
        time.sleep(1.0)
        tables = _rows(f"{out}.specimens.csv")
    assert [t["specimen"] for t in tables] == ["P1"]


def test_with_move_to_a_second_image_of_the_same_name_keeps_the_first_ones_row(ensemble, tmp_path):
    """Cameras reuse names (Image001.jpg): with --move-to, the second image's row replaced the first's, whose
    moved file then had no row in the outputs or the report."""
    incoming, out, done = tmp_path / "incoming", tmp_path / "results.csv", tmp_path / "done"
    (incoming / "P1").mkdir(parents=True)
    with Running(ensemble, incoming, out, move_to=done) as run:
        write_image(incoming / "P1" / "Image001.png", seed=1)
        run.wait_for(1)
        write_image(incoming / "P1" / "Image001.png", seed=2)
        run.wait_for(2)
    rows = _rows(out)  # written again from the store at stop
    assert len(rows) == 2 and len({r["sha256"] for r in rows}) == 2
    assert all(Path(r["path"]).is_file() and Path(r["path"]).is_relative_to(done) for r in rows)
    assert {r["specimen"] for r in rows} == {"P1"}  # the specimen of where each image was found


def test_move_to_moves_only_stored_images(ensemble, tmp_path):
    incoming, out, done = tmp_path / "incoming", tmp_path / "results.csv", tmp_path / "sorted"
    incoming.mkdir()
    seen_in_store = []

    with Running(ensemble, incoming, out, move_to=done) as run:
        original_move = run.watcher._move

        def checked_move(result):
            with ResultStore(store_path_for(out), as_pipeline(ensemble).digest, writer=False) as store:
                seen_in_store.append(store.has_path(result.path, result.sha256))
            original_move(result)

        run.watcher._move = checked_move
        write_image(incoming / "a.png", seed=1)
        (incoming / "broken.png").write_bytes(b"not a png")
        run.wait_for(2, timeout=40)
    assert seen_in_store == [True, True]
    assert not list(incoming.iterdir())
    moved = sorted(p.relative_to(done).as_posix() for p in done.rglob("*.png"))
    assert "error/broken.png" in moved and len(moved) == 2


def test_deleted_before_scoring_is_skipped(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out, settle=1.0) as run:
        write_image(incoming / "gone.png")
        time.sleep(0.2)
        (incoming / "gone.png").unlink()
        write_image(incoming / "kept.png", seed=3)
        run.wait_for(1)
        time.sleep(1.0)
    assert [r.path.name for r, _ in run.recorder.results] == ["kept.png"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_sigterm_or_ctrl_c_stops_cleanly_with_complete_outputs(models_dir, tmp_path, suffix, stop):
    """Ctrl-C (SIGINT) left the workbook's sheets and the CSV's specimens table empty: the interpreter exited
    while the loop was still writing them."""
    incoming, out = tmp_path / "incoming", tmp_path / f"results{suffix}"
    incoming.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "allscan", "watch", str(incoming), "--out", str(out), "--models", str(models_dir),
         "--settle", "0.3", "--quiet", "--xlsx-every", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        ready = proc.stdout.readline()  # printed once the folder is watched, also with --quiet
        assert ready.startswith(f"ready: watching {incoming}") and "0 images to catch up" in ready, ready
        for i in range(3):
            write_image(incoming / f"{i}.png", seed=i)
        deadline = time.monotonic() + 60
        lines = []
        while len(lines) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                lines.append(line)
        assert len(lines) == 3, lines
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    if suffix == ".csv":
        assert len(_rows(out)) == 3 and len(_rows(f"{out}.specimens.csv")) == 1
    else:
        book = load_workbook(out)
        assert book["Results"].max_row == 4 and book["Specimens"].max_row == 2
    assert not list(tmp_path.glob("*.allscan-tmp"))


def test_watch_writes_heatmaps_and_report(ensemble, tmp_path):
    from allscan.scoring.heatmaps import HeatmapOptions

    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    report = tmp_path / "report.html"
    options = HeatmapOptions(incoming / "maps", every=True)
    with Running(ensemble, incoming, out, heatmaps=options, report=report) as run:
        write_image(incoming / "a.png", seed=1, size=64)
        run.wait_for(1)
    assert run.recorder.results[0][0].heatmap
    assert len(list((incoming / "maps").glob("*.png"))) == 1  # figures are not scored as new images
    assert report.read_text(encoding="utf-8").count('class="card') == 1


def test_the_report_of_a_watch_that_moves_images_still_shows_them(ensemble, tmp_path):
    """With --move-to, the report's cards had no thumbnail: it looked for each image where it had been found."""
    incoming, out, done = tmp_path / "incoming", tmp_path / "results.csv", tmp_path / "sorted"
    incoming.mkdir()
    report = tmp_path / "report.html"
    with Running(ensemble, incoming, out, move_to=done, report=report) as run:
        write_image(incoming / "a.png", seed=1)
        write_image(incoming / "b.png", seed=2)
        run.wait_for(2)
    assert not list(incoming.iterdir())
    assert report.read_text(encoding="utf-8").count('<img class="thumb"') == 2
    report.unlink()
    with Running(ensemble, incoming, out, move_to=done, report=report):  # a later watch finds them in the buckets
        pass
    assert report.read_text(encoding="utf-8").count('<img class="thumb"') == 2


def test_poll_mode_for_network_shares(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out, poll=True) as run:
        write_image(incoming / "polled.png", seed=5)
        run.wait_for(1)
    assert [r.path.name for r, _ in run.recorder.results] == ["polled.png"]


@pytest.mark.parametrize("poll", [False, True])
def test_a_watched_folder_that_goes_is_reported_and_watched_again_when_it_returns(ensemble, tmp_path, poll):
    """A share unmounted or a drive pulled left the watch waiting in silence, and deaf once the folder returned."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out, poll=poll) as run:
        shutil.rmtree(incoming)
        stats = run.watcher.stats
        deadline = time.monotonic() + 10
        while not stats.notice and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats.notice == f"the watched folder {incoming} is gone (unmounted or deleted): waiting for it to return"
        incoming.mkdir()
        write_image(incoming / "while-away.png", seed=1)  # there when it returns: caught up
        run.wait_for(1)
        assert stats.notice == ""
        write_image(incoming / "after.png", seed=2)  # lands once it is watched again
        run.wait_for(2)
    assert sorted(r["file"] for r in _rows(out)) == ["after.png", "while-away.png"]


def test_a_csv_moved_away_while_watching_is_written_again_with_every_row(ensemble, tmp_path):
    """Rows went on being appended to the moved file, and the output path stayed empty until the watch stopped."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out) as run:
        write_image(incoming / "morning.png", seed=1)
        run.wait_for(1)
        out.rename(tmp_path / "archived.csv")
        write_image(incoming / "afternoon.png", seed=2)
        run.wait_for(2)
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert sorted(r["file"] for r in _rows(out)) == ["afternoon.png", "morning.png"]
        write_image(incoming / "evening.png", seed=3)
        run.wait_for(3)
        assert sorted(r["file"] for r in _rows(out)) == ["afternoon.png", "evening.png", "morning.png"]


def test_rows_appended_while_watching_carry_their_specimen(ensemble, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    with Running(ensemble, incoming, out) as run:
        write_image(incoming / "P-001" / "f1.png", seed=1)
        write_image(incoming / "f2.png", seed=2)
        run.wait_for(2)
        live = {r["file"]: r["specimen"] for r in _rows(out)}  # appended row by row, before any rewrite
    assert live == {"f1.png": "P-001", "f2.png": "incoming"}
    assert {r["file"]: r["specimen"] for r in _rows(out)} == live


def test_the_watch_display_says_once_when_the_folder_goes_and_when_it_is_back():
    import io

    from rich.console import Console

    from allscan.cli.display import WatchDisplay
    from allscan.run.watch import WatchStats

    console, stats = Console(file=io.StringIO(), width=200), WatchStats()
    display = WatchDisplay(console, stats, quiet=True)
    display.refresh()
    stats.notice = "the watched folder /lab/in is gone (unmounted or deleted): waiting for it to return"
    display.refresh()
    display.refresh()
    stats.notice = ""
    display.refresh()
    assert console.file.getvalue().splitlines() == [
        "warning: the watched folder /lab/in is gone (unmounted or deleted): waiting for it to return",
        "the watched folder is back: watching it again"]
