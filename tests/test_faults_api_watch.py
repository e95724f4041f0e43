"""Faults found using the Python API from a notebook or a LIMS script, and running ``allscan watch`` for a lab's day
(each test failed before its fix)."""

import csv
import errno
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

import allscan
from tests.utils import WatchThread, write_image


class Running(WatchThread):
    """A watcher on a thread for the duration of a ``with`` block, waited on by what it did."""

    def wait_until(self, done, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not done() and self.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.failure is None, f"the watch ended: {self.failure!r}"
        assert done(), f"never {what}"

    def wait_for(self, n):
        self.wait_until(lambda: self.watcher.stats.scored >= n, f"{n} images scored")


def _csv_files(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return sorted(row["file"] for row in csv.DictReader(handle))


def _xlsx_files(path):
    sheet = load_workbook(path, read_only=True)["Results"]
    rows = list(sheet.iter_rows(values_only=True))
    return sorted(row[rows[0].index("file")] for row in rows[1:])


@pytest.fixture()
def pictures(tmp_path):
    """Images made outside the watched folder, to be copied in."""
    return [write_image(tmp_path / "made" / f"field{i}.png", seed=i) for i in range(3)]


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO])
def test_a_share_that_stalls_neither_ends_the_watch_nor_loses_an_image(ensemble, tmp_path, pictures, monkeypatch,
                                                                        code):
    """A share that stopped answering for a moment (a stale NFS handle, an I/O error) ended the watch with exit 3:
    the stat of a file waiting to settle, or the check that the folder is still there, raised."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    stalled = threading.Event()
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if stalled.is_set() and self.absolute().is_relative_to(incoming):
            raise OSError(code, os.strerror(code), str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with Running(ensemble, incoming, out) as run:
        shutil.copyfile(pictures[0], incoming / "before.png")
        run.wait_for(1)
        stalled.set()
        shutil.copyfile(pictures[1], incoming / "during.png")
        time.sleep(2.5)  # the folder is checked every second
        assert run.failure is None and run.thread.is_alive()
        stalled.clear()
        run.wait_for(2)
        shutil.copyfile(pictures[2], incoming / "after.png")
        run.wait_for(3)
    assert _csv_files(out) == ["after.png", "before.png", "during.png"]


def test_a_workbook_that_cannot_be_replaced_while_watching_is_written_once_it_can(ensemble, tmp_path, pictures,
                                                                                   monkeypatch):
    """A workbook open in Excel on a share cannot be replaced: the first periodic rewrite ended the watch with
    exit 3, and images landing after it were never scored."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.xlsx"
    incoming.mkdir()
    locked = threading.Event()
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if locked.is_set() and Path(target) == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with Running(ensemble, incoming, out, xlsx_every=0.2) as run:
        stats = run.watcher.stats
        locked.set()
        shutil.copyfile(pictures[0], incoming / "while-open.png")
        run.wait_for(1)
        run.wait_until(lambda: "Permission denied" in getattr(stats, "output_notice", ""),
                       "said it could not write the workbook")
        assert "scoring goes on" in stats.output_notice
        shutil.copyfile(pictures[1], incoming / "still-open.png")
        run.wait_for(2)
        locked.clear()
        run.wait_until(lambda: not stats.output_notice, "wrote the workbook again")
        assert _xlsx_files(out) == ["still-open.png", "while-open.png"]
    assert _xlsx_files(out) == ["still-open.png", "while-open.png"]


def test_a_watched_folder_given_as_a_link_is_watched_through_it(ensemble, tmp_path, pictures):
    """A folder given as a link (/srv/incoming pointing at the share) was watched as the link itself: no event came,
    and nothing that landed after the start was ever scored."""
    real, incoming, out = tmp_path / "share" / "incoming", tmp_path / "incoming", tmp_path / "results.csv"
    real.mkdir(parents=True)
    incoming.symlink_to(real, target_is_directory=True)
    with Running(ensemble, incoming, out) as run:
        shutil.copyfile(pictures[0], real / "landed.png")
        (real / "P-001").mkdir()
        shutil.copyfile(pictures[1], real / "P-001" / "f1.png")
        run.wait_for(2)
    with open(out, encoding="utf-8", newline="") as handle:
        paths = sorted(row["path"] for row in csv.DictReader(handle))
    assert paths == [str(incoming / "P-001" / "f1.png"), str(incoming / "landed.png")]

def test_a_field_replaced_keeping_its_old_time_while_no_watch_ran_is_scored_again(ensemble, tmp_path, pictures):
    """A corrected field copied in while no watch ran, keeping its modification time (cp -p, rsync -a, a copy in
    Windows Explorer), kept the old field's verdict and sha256 at the restart: the catch-up compared that time alone."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()
    field = incoming / "Image001.png"
    shutil.copyfile(pictures[0], field)
    with Running(ensemble, incoming, out) as run:
        run.wait_for(1)
    time.sleep(2.2)  # rows are recorded to the second
    shutil.copyfile(pictures[1], field)
    day_ago = time.time() - 86400
    os.utime(field, (day_ago, day_ago))
    with Running(ensemble, incoming, out) as run:
        run.wait_for(1)
    with open(out, encoding="utf-8", newline="") as handle:
        rows = [(row["file"], row["sha256"]) for row in csv.DictReader(handle)]
    assert rows == [("Image001.png", hashlib.sha256(pictures[1].read_bytes()).hexdigest())]

def test_the_watch_log_says_when_the_outputs_cannot_be_written_and_when_they_are_again():
    from io import StringIO

    from rich.console import Console

    from allscan.cli.display import WatchDisplay
    from allscan.run.watch import WatchStats

    stats, console = WatchStats(), Console(file=StringIO(), width=300)
    display = WatchDisplay(console, stats, quiet=True)
    stats.output_notice = "cannot write r.xlsx: Permission denied; scoring goes on"
    display.refresh()
    display.refresh()
    stats.output_notice = ""
    display.refresh()
    assert console.file.getvalue().splitlines() == ["warning: cannot write r.xlsx: Permission denied; scoring goes on",
                                                    "the outputs are written again"]

def test_a_field_replaced_under_its_name_while_watching_has_one_row_in_the_csv(ensemble, tmp_path, pictures):
    """A corrected field saved over the first under its name was appended as a second row for that path: until the
    next rewrite (30 s by default) the CSV gave the old verdict and the new one for one file."""
    incoming, out = tmp_path / "incoming", tmp_path / "results.csv"
    incoming.mkdir()

    def rows():
        with open(out, encoding="utf-8", newline="") as handle:
            return [(row["file"], row["sha256"]) for row in csv.DictReader(handle)]

    with Running(ensemble, incoming, out) as run:
        shutil.copyfile(pictures[0], incoming / "Image001.png")
        shutil.copyfile(pictures[2], incoming / "Image002.png")
        run.wait_for(2)
        shutil.copyfile(pictures[1], incoming / "Image001.png")
        run.wait_until(lambda: len(run.watcher.stats.recent) >= 3, "the corrected field scored")
        sha = [hashlib.sha256(picture.read_bytes()).hexdigest() for picture in pictures]
        expected = [("Image001.png", sha[1]), ("Image002.png", sha[2])]
        run.wait_until(lambda: sorted(rows()) == expected, "one row a file", timeout=5)
        shutil.copyfile(pictures[0], incoming / "Image003.png")  # appended after the rewrite, once
        run.wait_until(lambda: len(rows()) == 3, "the next field appended")
    assert sorted(rows()) == [*expected, ("Image003.png", sha[0])]


@pytest.fixture()
def slides(tmp_path):
    """Two specimens' folders of fields under ``slides/``."""
    for specimen in ("P-001", "P-002"):
        for i in range(2):
            write_image(tmp_path / "slides" / specimen / f"field{i}.png", seed=10 * int(specimen[-1]) + i)
    return tmp_path / "slides"


@pytest.fixture(scope="module")
def screener(models_dir):
    return allscan.load(models_dir)


def test_rows_scored_in_memory_carry_the_specimen_the_command_writes(slides, screener, tmp_path):
    """Without out= every row's specimen was empty, where allscan predict names each image's slide folder: a
    notebook grouping by specimen got one group with no name."""
    written = screener.predict([slides], out=tmp_path / "r.csv")
    in_memory = screener.predict([slides, slides / "P-001" / "field0.png", np.zeros((80, 80, 3), np.uint8)])
    assert set(written["specimen"]) == {"P-001", "P-002"}
    assert in_memory["specimen"].tolist()[:4] == written["specimen"].tolist()
    assert in_memory["specimen"].tolist()[4:] == ["P-001", ""]  # a file named in the call by its folder; no array


def test_stain_norm_and_find_cells_are_true_or_false(slides, models_dir, tmp_path):
    """A NumPy bool (from a settings table) ended a run with out= in 'Object of type bool is not JSON serializable';
    a string "false" (from a settings file) normalised the stain silently, and was stored as another setting."""
    frame = allscan.load(models_dir, stain_norm=np.False_, find_cells=np.True_).predict([slides], tmp_path / "r.csv")
    assert len(frame) == 4 and (frame["verdict"] != "error").all()
    for options in ({"stain_norm": "false"}, {"stain_norm": 0}, {"find_cells": "no"}, {"find_cells": None}):
        name = next(iter(options))
        with pytest.raises(ValueError, match=f"{name} must be True or False"):
            allscan.load(models_dir, **options)
        with pytest.raises(ValueError, match=f"{name} must be True or False"):
            allscan.predict([], models=models_dir, **options)


def test_predict_takes_the_options_load_takes(slides, models_dir, monkeypatch):
    """allscan.predict(images, rbc_diameter=15) loaded the models, then raised TypeError: it passed every option
    but models, site and runtime to Screener.predict; a misspelt option with nothing to score passed unsaid."""
    options = {"rbc_diameter": 15, "stain_norm": False, "find_cells": False}
    frame = allscan.predict([slides], models=models_dir, **options)
    pd.testing.assert_frame_equal(frame, allscan.load(models_dir, **options).predict([slides]))
    assert len(frame) == 4 and frame["cells"].isna().all()
    from allscan.api import Screener

    monkeypatch.setattr(Screener, "__init__", lambda *a: pytest.fail("the models must not load"))
    with pytest.raises(TypeError, match="recusive"):
        allscan.predict([slides], models=models_dir, recusive=False)
    with pytest.raises(TypeError, match="bogus"):
        allscan.predict([], models=models_dir, bogus=1)
    with pytest.raises(ValueError, match="rbc_diameter"):
        allscan.predict([], models=models_dir, rbc_diameter=-1)


def test_a_refused_call_with_out_leaves_no_output_folder(slides, screener, models_dir, tmp_path):
    """allscan predict removes the output folders a refused run made; the API left them behind."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images to score"):
        allscan.predict([tmp_path / "empty"], models=models_dir, out=tmp_path / "day3" / "sub" / "r.csv")
    with pytest.raises(ValueError, match="unknown engine"):
        screener.predict([slides], out=tmp_path / "day4" / "r.csv", engine="spark")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "slides"]


@pytest.mark.parametrize("option, value", [("--settle", "-5"), ("--settle", "nan"), ("--max-delay", "inf"),
                                           ("--xlsx-every", "-1")])
def test_watch_refuses_a_duration_that_is_negative_or_not_a_number(tmp_path, option, value):
    """`--settle -5` or `nan` was taken: every file was scored at its first sight, while still being copied in."""
    from typer.testing import CliRunner

    from allscan.cli import app

    result = CliRunner().invoke(app, ["watch", str(tmp_path / "in"), "--out", str(tmp_path / "r.csv"), option, value,
                                      "--models", str(tmp_path / "none")], prog_name="allscan")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: Invalid value for '{option}': must be a number of seconds, 0 or more")
    assert not (tmp_path / "in").exists()
