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
