"""The command line: exit codes, usage errors, the models listing, output written."""

import json

from openpyxl import load_workbook
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from allscan import __version__
from allscan.cli import app
from allscan.images import OWN_FIGURE_SOFTWARE
from allscan.paths import store_path_for
from allscan.results.types import COLUMNS
from tests.utils import cli_process, write_image

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_predict_writes_workbook_and_exits_zero(tmp_path, models_dir):
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "r.xlsx"
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "--out", str(out), "--models", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert load_workbook(out)["Results"].max_row == 4
    assert "normal" in result.output  # the summary table


def test_predict_exit_one_when_some_images_fail(tmp_path, models_dir):
    write_image(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG broken")
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", str(tmp_path / "r.csv"),
                                 "--models", str(models_dir), "--quiet"])
    assert result.exit_code == 1
    assert result.output == ""


def test_usage_errors_exit_two(tmp_path, models_dir):
    write_image(tmp_path / "in" / "ok.png")
    cases = [
        [str(tmp_path / "missing"), "-o", str(tmp_path / "r.csv"), "--models", str(models_dir)],
        [str(tmp_path / "in"), "-o", str(tmp_path / "r.txt"), "--models", str(models_dir)],
        [str(tmp_path / "in"), "-o", str(tmp_path / "r.csv"), "--models", str(tmp_path / "no-models")],
    ]
    for args in cases:
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "r.csv").exists()


def test_inputs_without_an_image_are_refused_before_the_models_load_leaving_the_results_alone(tmp_path, models_dir):
    slides = tmp_path / "slides"
    (slides / "day1").mkdir(parents=True)
    (slides / "a.heic").write_bytes(b"ftypheic")
    (slides / "notes").write_text("stains")
    write_image(slides / "day1" / "ok.png")
    out = tmp_path / "r.csv"
    out.write_text(",".join(COLUMNS) + "\nlast week's results\n")
    code, lines, _, tensorflow = cli_process("predict", slides, "--no-recursive", "-o", out, "--models", models_dir)
    assert code == 2 and not tensorflow
    assert " ".join(lines) == (f"error: no images to score in {slides}: allscan reads .bmp .jfif .jpe .jpeg .jpg .png"
                               " .tif .tiff .webp files; found only other files (1 .heic, 1 without a suffix);"
                               " subfolders were not"
                               " searched (--no-recursive)")
    assert out.read_text().endswith("\nlast week's results\n") and not store_path_for(out).exists()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["predict", str(tmp_path / "empty"), "-o", str(out), "--models", str(models_dir)])
    assert result.exit_code == 2 and "no images to score" in result.output and "found no files" in result.output
    figures = tmp_path / "figures"
    info = PngInfo()
    info.add_text("Software", OWN_FIGURE_SOFTWARE)
    write_image(figures / "a-heatmap.png")
    Image.open(figures / "a-heatmap.png").save(figures / "a-heatmap.png", pnginfo=info)
    result = runner.invoke(app, ["predict", str(figures), "-o", str(out), "--models", str(models_dir)])
    assert result.exit_code == 2 and "found only other files (1 .png written by allscan)" in " ".join(
        result.output.split())


def test_tampered_model_is_refused(tmp_path, models_copy):
    write_image(tmp_path / "in" / "ok.png")
    with open(models_copy / "alexnet.keras", "ab") as handle:
        handle.write(b"tampered")
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", str(tmp_path / "r.csv"),
                                 "--models", str(models_copy)])
    assert result.exit_code == 2
    assert "does not match the manifest" in result.output


def test_models_lists_every_model(models_dir):
    result = runner.invoke(app, ["models", "--models", str(models_dir)])
    assert result.exit_code == 0
    manifest = json.loads((models_dir / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        assert name in result.output and entry["sha256"][:16] in result.output
        assert f"{entry['file']}  sha256 {entry['sha256']}; no OpenVINO files: runs in Keras" in result.output
    cells = json.loads((models_dir / "cells" / "manifest.json").read_text())
    assert "cell classifier in" in result.output
    assert all(f"cells/{e['file']}  sha256 {e['sha256']}" in result.output for e in cells["models"].values())
    listed = len(manifest["models"]) + len(cells["models"]) + bool(manifest.get("domain"))
    assert f"all {listed} files listed match their sha256" in result.output


def test_models_refuses_a_file_that_does_not_match_its_checksum(models_copy):
    with open(models_copy / "cells" / json.loads((models_copy / "cells" / "manifest.json").read_text())["models"]
              .popitem()[1]["file"], "ab") as handle:
        handle.write(b"tampered")
    result = runner.invoke(app, ["models", "--models", str(models_copy)])
    assert result.exit_code == 2
    assert "does not match the manifest" in result.output and "match their sha256" not in result.output
    assert "these models are refused until it is restored" in result.output  # `models` loads nothing: not "loading"


def test_training_commands_say_which_extra_they_need(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    for command in (["evaluate", str(tmp_path)], ["tune", str(tmp_path)], ["train", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert "allscan[train]" in result.output and "Traceback" not in result.output


def test_an_existing_output_that_allscan_did_not_write_is_refused_and_left_whole(tmp_path, models_dir):
    write_image(tmp_path / "in" / "ok.png")
    theirs = {"results.xlsx": b"PK\x03\x04 a lab's own workbook", "patients.csv": b"name,ward\nA,3\n"}
    for name, content in theirs.items():
        (tmp_path / name).write_bytes(content)
        code, lines, _, tensorflow = cli_process("predict", tmp_path / "in", "-o", tmp_path / name,
                                                 "--models", models_dir)
        assert code == 2 and not tensorflow
        assert f"the output {tmp_path / name} exists and is not an allscan results file" in " ".join(lines)
        assert (tmp_path / name).read_bytes() == content and not store_path_for(tmp_path / name).exists()
    for name in ("mine.csv", "mine.xlsx"):  # an output allscan wrote is replaced, however often
        for _ in range(2):
            result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", str(tmp_path / name), "--models",
                                         str(models_dir), "--rescore"])
            assert result.exit_code == 0, result.output


def test_explain_given_a_folder_says_so_and_points_to_predict(tmp_path):
    result = runner.invoke(app, ["explain", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path} is a folder: explain takes one image (allscan predict scores a folder)" in " ".join(
        result.output.split())


def test_explain_refuses_a_figure_name_that_is_not_png(tmp_path, models_dir):
    """--out field.jpg wrote PNG bytes under a JPEG name, which viewers and a later predict misread."""
    image = write_image(tmp_path / "field.png")
    result = runner.invoke(app, ["explain", str(image), "--out", str(tmp_path / "figure.jpg"), "--models",
                                 str(models_dir)])
    assert result.exit_code == 2
    assert "the heatmap figure is a PNG image: name it .png" in " ".join(result.output.split())
    assert not (tmp_path / "figure.jpg").exists()


def test_a_run_says_which_images_it_left_out_for_their_format(tmp_path, models_dir):
    """Phone photos (.heic) and whole-slide scans (.svs) beside the fields were left out without a word."""
    slides = tmp_path / "slides"
    write_image(slides / "a.png")
    (slides / "b.heic").write_bytes(b"ftypheic")
    (slides / "P1").mkdir()
    (slides / "P1" / "c.svs").write_bytes(b"II*\x00")
    (slides / "P1" / "d.svs").write_bytes(b"II*\x00")
    (slides / "notes.txt").write_text("stains")
    result = runner.invoke(app, ["predict", str(slides), "-o", str(tmp_path / "r.csv"), "--models", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert ("note: files in formats allscan does not read were left out (2 .svs, 1 .heic)"
            in " ".join(result.output.split()))
