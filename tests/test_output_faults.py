"""The report, the PDF and explain's figure replace only a file allscan wrote; the PDF survives long names
and shows a specimen whose images failed as failed, naming the files."""

import os
import re
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from allscan.cli import app
from allscan.results.pdf import _GREEN, _RED, PdfReport
from allscan.run.batch import run_batch
from allscan.run.preflight import PreflightError, check_outputs
from tests.utils import cli_process, jpeg_bytes, write_image

runner = CliRunner()


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args), "--quiet"])


def _slides(root: Path) -> Path:
    write_image(root / "P1" / "field0.png", seed=0)
    return root


def _flat(text: str) -> str:
    """Text without its whitespace: a long name the PDF wrapped reads whole again."""
    return "".join(text.split())


# ---- replacing only what allscan wrote ---------------------------------------------------------------------


@pytest.mark.parametrize("option, name, content", [
    ("--report", "patient_slide.jpg", jpeg_bytes()),
    ("--report", "notes.html", b"<!DOCTYPE html><html><head><title>Ward notes</title></head></html>"),
    ("--pdf", "worklist.docx", b"PK\x03\x04 a lab's document"),
    ("--pdf", "protocol.pdf", b"%PDF-1.4\n% another program's PDF\ntrailer\n<< /Size 1 >>\n%%EOF\n"),
])
def test_report_or_pdf_over_a_file_allscan_did_not_write_is_refused_before_models_load(
        option, name, content, tmp_path, models_dir):
    """`predict in -o r.csv --report patient_slide.jpg --pdf worklist.docx` replaced both with exit 0."""
    victim = tmp_path / name
    victim.write_bytes(content)
    code, lines, _, tf_loaded = cli_process("predict", _slides(tmp_path / "in"), "-o", tmp_path / "r.csv",
                                            option, victim, "--models", models_dir)
    assert code == 2, lines
    assert len(lines) == 1 and f"{victim} exists and is not an allscan" in lines[0], lines
    assert f"give another {option}, or move that file away first" in lines[0], lines
    assert not tf_loaded, "the check must come before TensorFlow and the models load"
    assert victim.read_bytes() == content
    assert not (tmp_path / "r.csv").exists()


def test_watch_report_over_an_image_is_refused_before_models_load(tmp_path):
    image = tmp_path / "slide.jpg"
    image.write_bytes(jpeg_bytes())
    # No models: were the report not checked first, watch would stop at their manifest rather than run on.
    code, lines, _, tf_loaded = cli_process("watch", tmp_path / "in", "-o", tmp_path / "r.csv", "--report", image,
                                            "--models", tmp_path / "no-models")
    assert code == 2 and len(lines) == 1 and "is not an allscan HTML report" in lines[0], lines
    assert not tf_loaded
    assert image.read_bytes() == jpeg_bytes()


def test_report_and_pdf_allscan_wrote_or_empty_ones_are_replaced(tmp_path, models_dir):
    slides = _slides(tmp_path / "in")
    report, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    report.touch()
    pdf.touch()
    for out in ("a.csv", "b.csv"):  # empty files first, then the ones the first run wrote
        for path in (report, pdf):
            os.utime(path, (0, 0))
        result = _predict(slides, "-o", tmp_path / out, "--report", report, "--pdf", pdf, "--models", models_dir)
        assert result.exit_code == 0, result.output
        assert report.stat().st_mtime > 0 and pdf.stat().st_mtime > 0  # each written anew
        assert "<title>allscan report</title>" in report.read_text(encoding="utf-8")
        assert PdfReader(pdf).metadata.title == "allscan batch report"


def test_pdf_another_program_saved_again_is_not_allscans_any_more(tmp_path, ensemble):
    """An allscan PDF signed or annotated in a viewer (an update appended) holds the reviewer's work."""
    pdf = tmp_path / "r.pdf"
    run_batch([_slides(tmp_path / "in")], tmp_path / "r.csv", ensemble, pdf=PdfReport(pdf))
    check_outputs(tmp_path / "r2.csv", pdf=pdf)  # as written: allscan's, so it may be replaced
    with open(pdf, "ab") as handle:
        handle.write(b"\n5 0 obj\n<< /Author (Dr Reviewer) >>\nendobj\nxref\n0 1\n0000000000 65535 f \n"
                     b"trailer\n<< /Size 6 /Info 5 0 R >>\nstartxref\n123456\n%%EOF\n")
    with pytest.raises(PreflightError, match="is not an allscan PDF report"):
        check_outputs(tmp_path / "r2.csv", pdf=pdf)


def test_explain_out_over_its_own_image_is_refused_before_models_load(tmp_path, models_dir):
    """`allscan explain victim.jpg --out victim.jpg` replaced the smear with its figure, exit 0."""
    image = tmp_path / "victim.jpg"
    image.write_bytes(jpeg_bytes())
    code, lines, _, tf_loaded = cli_process("explain", image, "--out", image, "--models", models_dir)
    assert code == 2 and len(lines) == 1, lines
    assert "is not an allscan figure" in lines[0] and "give another --out" in lines[0], lines
    assert not tf_loaded
    assert image.read_bytes() == jpeg_bytes()


def test_explain_replaces_its_own_figure(tmp_path, models_dir):
    image, figure = write_image(tmp_path / "field.png"), tmp_path / "figure.png"
    for _ in range(2):
        result = runner.invoke(app, ["explain", str(image), "--out", str(figure), "--models", str(models_dir)])
        assert result.exit_code == 0, result.output
        assert figure.read_bytes().startswith(b"\x89PNG")


# ---- the PDF's content ---------------------------------------------------------------------------------------


def test_pdf_with_a_240_character_specimen_name_is_written(tmp_path, ensemble):
    """A specimen name of about 160 characters or more without a space crashed the PDF (exit 4)."""
    name, file = "S" * 240, "F" * 200 + ".jpg"
    slides = tmp_path / "in"
    (slides / name).mkdir(parents=True)
    (slides / name / file).write_bytes(b"junk")  # its name goes to the list of failed images
    write_image(slides / name / "field0.png")
    pdf = tmp_path / "r.pdf"
    run_batch([slides], tmp_path / "r.csv", ensemble, pdf=PdfReport(pdf))
    pages = [_flat(page.extract_text()) for page in PdfReader(pdf).pages]
    assert len(pages) == 2
    assert name in pages[0] and f"Specimen{name}" in pages[1] and file in pages[1]


def _fill_colours(page) -> set[tuple[float, ...]]:
    stream = page.get_contents().get_data().decode("latin-1")
    return {tuple(round(float(v), 3) for v in m) for m in re.findall(r"([\d.]+) ([\d.]+) ([\d.]+) rg", stream)}


def _rgb(colour) -> tuple[float, ...]:
    return tuple(round(v, 3) for v in colour.rgb())


def test_pdf_shows_a_specimen_without_a_scored_image_as_failed_and_names_failed_files(tmp_path, ensemble):
    """An `error` specimen was printed in the normal green above "No field is called ALL or flagged for
    review.", and no page named the files that failed."""
    slides = tmp_path / "in"
    (slides / "S1").mkdir(parents=True)
    (slides / "S1" / "a.jpg").write_bytes(b"junk")
    write_image(slides / "S2" / "field0.png")
    (slides / "S2" / "b.jpg").write_bytes(b"")
    pdf = tmp_path / "r.pdf"
    run_batch([slides], tmp_path / "r.csv", ensemble, pdf=PdfReport(pdf))
    reader = PdfReader(pdf)
    failed, partial = reader.pages[1], reader.pages[2]
    text = failed.extract_text()
    assert "Specimen S1: error" in text and "No image of this specimen could be scored" in text
    assert "No field is called ALL" not in text
    assert "Images that could not be scored: 1" in text and "a.jpg" in text
    assert {_rgb(_GREEN), _rgb(_RED)}.isdisjoint(_fill_colours(failed)), "error needs a colour of its own"
    text = partial.extract_text()
    assert "Specimen S2" in text and "Images that could not be scored: 1" in text and "b.jpg" in text
    assert "field0.png" not in text.split("Images that could not be scored")[1]
    assert _rgb(_RED if "Specimen S2: ALL" in text else _GREEN) in _fill_colours(partial)  # scored: as before
