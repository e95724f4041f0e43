"""The Excel workbook prints as a table: landscape, one page wide, the header on every page, the run
in the page header and page numbers in the footer, columns as wide as their content."""

from openpyxl import load_workbook

from allscan.results.types import COLUMNS
from allscan.run.batch import run_batch
from tests.utils import write_image


def test_results_sheet_prints_landscape_one_page_wide_with_header_and_page_numbers(tmp_path, ensemble):
    folder = tmp_path / "in"
    long_name = "patient-0042-field-" + "x" * 22 + ".png"
    write_image(folder / long_name)
    write_image(folder / "b.png", seed=3)
    out = tmp_path / "results.xlsx"
    run_batch([folder], out, ensemble)
    sheet = load_workbook(out)["Results"]
    assert sheet.page_setup.orientation == "landscape"
    assert sheet.sheet_properties.pageSetUpPr.fitToPage
    assert sheet.page_setup.fitToWidth == 1 and sheet.page_setup.fitToHeight == 0
    assert sheet.print_title_rows == "$1:$1"
    assert "allscan" in sheet.oddHeader.center.text and "models" in sheet.oddHeader.center.text
    assert "&P" in sheet.oddFooter.center.text and "&N" in sheet.oddFooter.center.text
    width = {c: sheet.column_dimensions[sheet.cell(1, i + 1).column_letter].width for i, c in enumerate(COLUMNS)}
    assert width["file"] >= len(long_name) and width["path"] >= len(long_name)
    assert width["verdict"] >= len("verdict") and width["sha256"] <= 18


def test_a_file_name_with_control_characters_is_written_escaped_not_a_crash(tmp_path, ensemble):
    folder = tmp_path / "in"
    write_image(folder / "slide\x01\x1b7.png")
    write_image(folder / "b.png", seed=3)
    out = tmp_path / "results.xlsx"
    summary = run_batch([folder], out, ensemble)
    assert summary.counts.errors == 0
    sheet = load_workbook(out)["Results"]
    files = [row[COLUMNS.index("file")] for row in sheet.iter_rows(min_row=2, values_only=True)]
    assert files == ["b.png", "slide\\x01\\x1b7.png"]
