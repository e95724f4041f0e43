"""A refused run leaves nothing behind: no output folders it made, no lock of a store it never wrote."""

import fcntl
import os

from typer.testing import CliRunner

from allscan.cli import app
from allscan.results import lock as store_lock
from allscan.results.lock import StoreLock
from tests.utils import write_image

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_run_refused_after_its_outputs_were_checked_leaves_no_folders(tmp_path):
    """`predict slides --out day3/r.csv --heatmaps day3-maps --models typo` was refused (exit 2, nothing done), and
    left `day3/` holding `r.csv.allscan.sqlite.lock`, and an empty `day3-maps/`."""
    write_image(tmp_path / "slides" / "a.png")
    result = _invoke("predict", tmp_path / "slides", "--out", tmp_path / "day3" / "r.csv", "--heatmaps",
                     tmp_path / "day3-maps" / "hm", "--pdf", tmp_path / "pdfs" / "a.pdf", "--models", tmp_path / "typo")
    assert result.exit_code == 2 and "no models found" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slides"]


def test_a_refused_run_keeps_folders_that_were_there_and_what_an_earlier_run_wrote(models_dir, tmp_path):
    write_image(tmp_path / "slides" / "a.png")
    out = tmp_path / "day3" / "r.csv"
    assert _invoke("predict", tmp_path / "slides", "--out", out, "--models", models_dir).exit_code == 0
    written = sorted(p.name for p in out.parent.iterdir())
    result = _invoke("predict", tmp_path / "slides", "--out", out, "--heatmaps", tmp_path / "maps", "--models",
                     tmp_path / "typo")
    assert result.exit_code == 2
    assert sorted(p.name for p in out.parent.iterdir()) == written and not (tmp_path / "maps").exists()


def test_explain_of_an_unreadable_image_leaves_no_figure_folder(models_dir, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = _invoke("explain", tmp_path / "bad.png", "--out", tmp_path / "figures" / "bad.png", "--models", models_dir)
    assert result.exit_code == 1
    assert not (tmp_path / "figures").exists()


def test_a_lock_file_removed_while_being_taken_is_taken_anew(tmp_path, monkeypatch):
    """A refused run removes its lock file: a second run that opened the file just before must not hold a lock on
    the removed file, which a third run would not see."""
    store = tmp_path / "r.csv.allscan.sqlite"
    flock = fcntl.flock
    calls = []

    def removed_before_locked(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(store_lock.lock_path_for(store))
        return flock(fd, operation)

    monkeypatch.setattr(store_lock.fcntl, "flock", removed_before_locked)
    with StoreLock(store):
        held = store_lock._held[os.path.abspath(store_lock.lock_path_for(store))][0]
        assert len(calls) == 2
        assert os.path.samestat(os.fstat(held), os.stat(store_lock.lock_path_for(store)))
