"""Atomic writes: a crash while writing leaves the previous file intact and no debris."""

import pytest

from allscan.fileio import atomic_write, atomic_write_text


def test_crash_during_write_keeps_old_file(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old complete file\n")

    def half_then_crash(tmp):
        tmp.write_text("half of a new fi")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old complete file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.csv", "x")
    finally:
        os.umask(mask)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o644
