"""The printable report: a cover page, a page per specimen with its flagged fields and a place to sign,
fonts embedded, A4 or Letter; read back with pypdf and rendered with pdftoppm where it is installed."""

import shutil
import subprocess

import pytest
from pypdf import PdfReader

from allscan.results.pdf import PdfReport
from allscan.run.batch import run_batch
from tests.utils import write_image


def _slides(root, specimens):
    for name, seeds in specimens.items():
        for seed in seeds:
            write_image(root / name / f"field{seed}.png", seed=seed)
    return root


@pytest.mark.parametrize("paper, size", [("a4", (595, 842)), ("letter", (612, 792))])
def test_pdf_has_a_cover_and_a_page_per_specimen_with_sign_off_lines(tmp_path, ensemble, paper, size):
    slides = _slides(tmp_path / "slides", {"P-001": (1, 2), "P-002": (3,), "P-003": (4, 5)})
    pdf = tmp_path / "report.pdf"
    run_batch([slides], tmp_path / "r.csv", ensemble, pdf=PdfReport(pdf, paper))
    reader = PdfReader(pdf)
    assert len(reader.pages) == 4
    assert tuple(round(float(v)) for v in reader.pages[0].mediabox[2:]) == size
    cover = reader.pages[0].extract_text()
    assert "allscan batch report" in cover and "Research use only" in cover and "models digest" in cover
    for page, specimen in zip(reader.pages[1:], ("P-001", "P-002", "P-003")):
        text = page.extract_text()
        assert f"Specimen {specimen}" in text and "Reviewed by:" in text and "Date:" in text
    fonts = {font["/BaseFont"] for page in reader.pages for font in page["/Resources"]["/Font"].values()}
    assert all("+" in str(name) for name in fonts), f"fonts not embedded: {fonts}"


def test_pdf_refuses_unknown_paper(tmp_path):
    with pytest.raises(ValueError, match="unknown paper"):
        PdfReport(tmp_path / "r.pdf", "a3")


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is not installed")
def test_pdf_pages_render(tmp_path, ensemble):
    slides = _slides(tmp_path / "slides", {"P-001": (1,)})
    pdf = tmp_path / "report.pdf"
    run_batch([slides], tmp_path / "r.csv", ensemble, pdf=PdfReport(pdf))
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True)
    assert sorted(p.name for p in tmp_path.glob("page-*.png")) == ["page-1.png", "page-2.png"]


def test_pdf_is_written_when_an_image_or_its_heatmap_is_gone_or_corrupt(tmp_path):
    from allscan.results.pdf import write_pdf
    from allscan.results.tables import RunInfo
    from allscan.results.types import DomainInfo, ImageResult, RunCounts, Score
    from allscan.scoring.specimens import SpecimenRule, summarise

    corrupt = tmp_path / "hm.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing readable
    score = Score(0.99, "ALL", False, 4, {"a": 0.99}, DomainInfo(1.0, 1, "in", 0.5, ""))
    present = write_image(tmp_path / "P-001" / "a.png")
    results = [ImageResult(present, "x", 64, 64, score, heatmap=str(corrupt), specimen="P-001"),
               ImageResult(tmp_path / "P-001" / "gone.png", "y", 64, 64, score, specimen="P-001")]
    info = RunInfo("0", "start", "end", "host", "cmd", "digest", [], 0.3, (0.05, 0.95))
    pdf = tmp_path / "report.pdf"
    write_pdf(pdf, results, info, RunCounts(), summarise(results, SpecimenRule()))
    text = PdfReader(pdf).pages[1].extract_text()
    assert "a.png" in text and "gone.png" in text and "Grad-CAM" not in text
