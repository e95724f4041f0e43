"""Faults in what allscan says: a run's notes with --quiet, the images a specimen pattern or map missed, and usage
errors as one line."""

import csv
from pathlib import Path

import pytest

from typer.testing import CliRunner

from allscan.cli import app
from tests.utils import write_image

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _notes(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("note:")]


def test_quiet_still_says_which_named_inputs_were_left_out(models_dir, tmp_path, monkeypatch):
    """`--quiet` is for scripts: it hid the one line saying a named file was not scored (exit 0, nothing said),
    so a cron job never learnt that half its inputs were ignored."""
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "scan001", fmt="PNG")
    (tmp_path / "p.heic").write_bytes(b"x")
    result = _invoke("predict", "b.png", "scan001", "p.heic", "--out", "out.csv", "--models", models_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert _notes(result.output) == [
        "note: files in formats allscan does not read were left out (1 .heic); convert them to JPEG, PNG or TIFF to "
        "score them",
        "note: left out scan001: named as inputs, but allscan scores only files named .bmp .jfif .jpe .jpeg .jpg .png "
        ".tif .tiff .webp (not hidden, not its own outputs)"]
    assert "results:" not in result.output  # the summary stays quiet


def test_an_empty_specimen_pattern_is_refused_rather_than_grouping_by_folder(models_dir, tmp_path):
    """`--specimen-pattern ""` (an unset shell variable) silently grouped the images by folder, exit 0."""
    write_image(tmp_path / "slides" / "a.png")
    out = tmp_path / "r.csv"
    result = _invoke("predict", tmp_path / "slides", "--out", out, "--models", models_dir, "--specimen-pattern", "")
    assert result.exit_code == 2
    assert "--specimen-pattern is empty" in result.output
    assert not out.exists()


def test_a_specimen_map_that_places_none_of_the_images_says_so(models_dir, tmp_path):
    """A map of another batch's images (or of these under another folder) placed none of the run's images: each
    became its own specimen with only a note in its row, and the run ended with exit 0 and not a word."""
    slides = tmp_path / "slides"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_image(slides / name, seed=i)
    write_image(tmp_path / "old" / "x.png")
    map_file = tmp_path / "map.csv"
    map_file.write_text("path,specimen\nold/x.png,P-07\nslides/a.png,P-01\n", encoding="utf-8")
    out = tmp_path / "r.csv"
    result = _invoke("predict", slides, "--out", out, "--models", models_dir, "--specimens", map_file, "--quiet")
    assert result.exit_code == 0, result.output
    assert _notes(result.output) == ["note: 2 of 3 images not in the specimen map: each such image is its own specimen"]
    with open(f"{out}.specimens.csv", newline="", encoding="utf-8") as handle:
        assert sorted(row["specimen"] for row in csv.DictReader(handle)) == ["P-01", "b", "c"]


def test_a_pattern_that_places_every_image_adds_no_note(models_dir, tmp_path):
    slides = tmp_path / "slides"
    for i, name in enumerate(("ACC1_a.png", "ACC1_b.png", "ACC2_c.png")):
        write_image(slides / name, seed=i)
    result = _invoke("predict", slides, "--out", Path(tmp_path / "r.csv"), "--models", models_dir,
                     "--specimen-pattern", r"^(ACC\d+)_")
    assert result.exit_code == 0, result.output
    assert _notes(result.output) == []


@pytest.mark.parametrize(("args", "line"), [
    (["predict", "--foo", "x"], "error: No such option: --foo (Possible options: --out, --pdf) (see allscan predict "
                                "--help)"),
    (["predict", "x", "--batch-size", "many"], "error: Invalid value for '--batch-size': "),
    (["predik"], "error: No such command 'predik'. Did you mean 'predict'? (see allscan --help)"),
    (["--bar"], "error: No such option: --bar (see allscan --help)"),
])
def test_a_usage_error_is_one_error_line_as_every_other_failure(args, line):
    """An unknown option printed Typer's framed box of six lines (usage, a hint, the message split across a frame
    at 80 columns), unlike every other failure's one `error:` line, so a log grep for `error:` missed it."""
    result = runner.invoke(app, args, prog_name="allscan")
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and result.output.startswith(line), result.output
