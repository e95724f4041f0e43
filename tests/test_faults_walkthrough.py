"""Faults found by following the README as a lab user would, on reruns and option combinations."""

import csv
from pathlib import Path

from typer.testing import CliRunner

from allscan.cli import app
from tests.utils import write_image

runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _slides(folder: Path) -> Path:
    for i, name in enumerate(("P-01/a.png", "P-01/b.png", "P-02/c.png")):
        write_image(folder / name, seed=i)
    return folder


def test_a_rerun_from_another_folder_does_not_mark_images_duplicates_of_themselves(models_dir, tmp_path,
                                                                                   monkeypatch):
    """Rerunning the same job from another working folder (relative paths spelt otherwise) marked every image
    `duplicate_of` itself, under the spelling relative to the first run's folder."""
    slides = _slides(tmp_path / "slides")
    (tmp_path / "lab").mkdir()
    monkeypatch.chdir(tmp_path / "lab")
    first = runner.invoke(app, ["predict", "../slides", "--out", "r.csv", "--models", str(models_dir), "--quiet"])
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path)
    again = runner.invoke(app, ["predict", "slides", "--out", "lab/r.csv", "--models", str(models_dir)])
    assert again.exit_code == 0, again.output
    assert "3 images were already scored" in again.output
    rows = _rows(tmp_path / "lab" / "r.csv")
    assert sorted(r["path"] for r in rows) == ["slides/P-01/a.png", "slides/P-01/b.png", "slides/P-02/c.png"]
    assert [r["duplicate_of"] for r in rows] == ["", "", ""]
    copy = slides / "P-02" / "copy-of-a.png"
    copy.write_bytes((slides / "P-01" / "a.png").read_bytes())
    third = runner.invoke(app, ["predict", "slides", "--out", "lab/r.csv", "--models", str(models_dir), "--quiet"])
    assert third.exit_code == 0, third.output
    marked = {r["path"]: r["duplicate_of"] for r in _rows(tmp_path / "lab" / "r.csv")}
    assert marked["slides/P-02/copy-of-a.png"] == "../slides/P-01/a.png"
    assert marked["slides/P-01/a.png"] == ""


def test_a_specimen_map_naming_a_folder_says_so_rather_than_that_it_does_not_exist(tmp_path):
    """A map row giving a slide's folder (not its images) was refused as ``P-01 does not exist``, which it does."""
    slides = _slides(tmp_path / "slides")
    specimen_map = tmp_path / "map.csv"
    specimen_map.write_text("path,specimen\nslides/P-01,ACC1\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", str(slides), "--out", str(tmp_path / "r.csv"), "--specimens",
                                 str(specimen_map)])
    assert result.exit_code == 2
    assert "line 2: slides/P-01 is a folder: the map lists image files, one row each" in result.output
    assert "does not exist" not in result.output
    assert not (tmp_path / "r.csv").exists()


def test_explain_takes_no_cells_as_the_readme_says(models_dir, tmp_path, monkeypatch):
    """The README's Cells section says `--no-cells` skips the cells in predict, watch and explain; explain
    refused it as an unknown option (exit 2)."""
    image = write_image(tmp_path / "field.png")
    monkeypatch.chdir(tmp_path)
    with_cells = runner.invoke(app, ["explain", str(image), "--models", str(models_dir)])
    assert with_cells.exit_code == 0, with_cells.output
    assert "white cells:" in with_cells.output
    without = runner.invoke(app, ["explain", str(image), "--models", str(models_dir), "--no-cells",
                                  "--out", "plain.png"])
    assert without.exit_code == 0, without.output
    assert "white cells" not in without.output
    assert (tmp_path / "plain.png").is_file()


def test_options_that_only_act_with_another_are_refused_without_it(models_dir, tmp_path):
    """`--paper letter` without `--pdf`, or `--address auto` without `--engine ray`, ran and wrote no PDF, or
    scored on this machine instead of the cluster, without a word: refused like `--heatmaps-all` without
    `--heatmaps`, before anything is written."""
    slides = _slides(tmp_path / "slides")
    out = tmp_path / "r.csv"
    cases = {("--paper", "letter"): "--paper needs --pdf FILE",
             ("--address", "auto"): "--address needs --engine ray",
             ("--actors", "3"): "--actors needs --engine ray",
             ("--actor-cpus", "2"): "--actor-cpus needs --engine ray"}
    for option, message in cases.items():
        result = runner.invoke(app, ["predict", str(slides), "--out", str(out), "--models", str(models_dir), *option])
        assert (result.exit_code, result.output) == (2, f"error: {message}\n"), option
        assert not out.exists()
    fine = runner.invoke(app, ["predict", str(slides), "--out", str(out), "--models", str(models_dir), "--quiet",
                               "--paper", "letter", "--pdf", str(tmp_path / "r.pdf")])
    assert fine.exit_code == 0, fine.output
    assert (tmp_path / "r.pdf").is_file()


def test_a_heatmaps_folder_among_the_inputs_hides_none_of_their_images(models_dir, tmp_path):
    """`--heatmaps` naming an input folder (`predict . --heatmaps .`) or one of its slides' folders left every
    image under it out of the run: exit 0, and the earlier results emptied. The figures themselves are still never
    scored."""
    slides = _slides(tmp_path / "slides")
    out = tmp_path / "r.csv"
    for folder in (slides / "P-01", slides):
        result = runner.invoke(app, ["predict", str(slides), "--out", str(out), "--models", str(models_dir),
                                     "--heatmaps", str(folder), "--heatmaps-all"])
        assert result.exit_code == 0, result.output
        rows = _rows(out)
        assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.png", "c.png"], folder
        assert all(Path(r["heatmap"]).parent == folder and Path(r["heatmap"]).is_file() for r in rows)


def test_the_summary_says_when_the_cells_were_looked_for_and_none_was_found(models_dir, tmp_path):
    """A run whose fields held no white cell (a blank frame, the wrong magnification) printed the summary of a
    `--no-cells` run: no cell line at all, as if the cells had not been looked for."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (96, 96), (240, 240, 240)).save(tmp_path / "in" / "blank.png")
    args = ["predict", str(tmp_path / "in"), "--out", str(tmp_path / "r.csv"), "--models", str(models_dir)]
    looked = runner.invoke(app, args)
    assert looked.exit_code == 0, looked.output
    assert _rows(tmp_path / "r.csv")[0]["cells"] == "0"
    lines = {line.strip("│ ").split("│")[0].strip(): line.split("│")[-2].strip()
             for line in looked.output.splitlines() if line.count("│") == 3}
    assert (lines["white cells found"], lines["blasts among them"]) == ("0", "0")
    skipped = runner.invoke(app, [*args, "--no-cells"])
    assert skipped.exit_code == 0, skipped.output
    assert "white cells" not in skipped.output and "blasts" not in skipped.output


def test_a_specimen_map_saved_in_a_windows_encoding_is_refused_with_its_line_and_the_remedy(tmp_path):
    """A map that a spreadsheet saved as CSV in its locale's encoding (Windows-1252, `Müller`) was refused with
    Python's codec error: a character offset, no line, no remedy."""
    slides = tmp_path / "slides"
    write_image(slides / "Müller" / "f1.png")
    specimen_map = tmp_path / "map.csv"
    specimen_map.write_bytes("path;specimen\r\nslides/Müller/f1.png;ACC1\r\n".encode("cp1252"))
    result = runner.invoke(app, ["predict", str(slides), "--out", str(tmp_path / "r.csv"), "--specimens",
                                 str(specimen_map)])
    assert result.exit_code == 2
    assert result.output == (f"error: specimen map {specimen_map}, line 2: not UTF-8 text (byte 0xfc); save the map"
                             " as CSV UTF-8\n")


def test_a_file_named_on_the_command_line_is_never_left_out_unsaid(models_dir, tmp_path, monkeypatch):
    """`allscan predict scan001 b.png r.csv` (a camera's file without a suffix; an output named where an input goes)
    scored b.png alone and said nothing of the others: `total 1 of 1`, exit 0."""
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "scan001", fmt="PNG")
    write_image(tmp_path / "b.png", seed=1)
    (tmp_path / "r.csv").write_text("path\n", encoding="utf-8")
    (tmp_path / "p.heic").write_bytes(b"x")
    result = runner.invoke(app, ["predict", "scan001", "b.png", "r.csv", "p.heic", "--out", "out.csv", "--models",
                                 str(models_dir)])
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in _rows(tmp_path / "out.csv")] == ["b.png"]
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: files in formats allscan does not read were left out (1 .heic); convert them to JPEG, PNG "
                     "or TIFF to score them",
                     "note: left out scan001, r.csv: named as inputs, but allscan scores only files named .bmp .jfif "
                     ".jpe .jpeg .jpg .png .tif .tiff .webp (not hidden, not its own outputs)"]


def test_a_rerun_with_another_heatmaps_folder_draws_its_figures_there(models_dir, tmp_path):
    """`--heatmaps day2/` on a rerun into the same results file left day2/ empty of the images scored before: their
    rows kept pointing at the earlier run's folder, and day2/ lacked the figures the README says it gets."""
    slides = _slides(tmp_path / "slides")
    args = ["predict", str(slides), "--out", str(tmp_path / "r.csv"), "--models", str(models_dir), "--quiet",
            "--heatmaps-all"]
    for folder in ("day1", "day2"):
        result = runner.invoke(app, [*args, "--heatmaps", str(tmp_path / folder)])
        assert result.exit_code == 0, result.output
        rows = _rows(tmp_path / "r.csv")
        assert {Path(r["heatmap"]).parent for r in rows} == {tmp_path / folder}, folder
        assert all(Path(r["heatmap"]).is_file() for r in rows)
    plain = runner.invoke(app, args[:-1])
    assert plain.exit_code == 0, plain.output
    assert {Path(r["heatmap"]).parent for r in _rows(tmp_path / "r.csv")} == {tmp_path / "day2"}
