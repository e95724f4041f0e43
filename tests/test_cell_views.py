"""The reviewer's views of the cells: boxes and a strip of the most blast-like cells on each report card,
the run-wide cell gallery (sorted, capped, linked, filterable offline), cell counts in the PDF, and the
explain figure and summary."""

import base64
import hashlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader
from typer.testing import CliRunner

from allscan.results.gallery import BLAST_COLOUR, OTHER_COLOUR, gallery_tiles, render_gallery
from allscan.results.report import render_report, write_report
from allscan.results.tables import RunInfo
from allscan.results.types import CellFindings, CellResult, DomainInfo, ImageResult, RunCounts, Score
from tests.test_report import CHROMIUM, _check, _chromium
from tests.utils import disc_smear

SIDE = 240
GREY = (200, 200, 200)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def _plain_image(path: Path) -> str:
    """A flat grey image (so drawn boxes are the only colour in it); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIDE, SIDE), GREY).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cell(number: int, x: int, y: int, p: float, half: int = 20) -> CellResult:
    return CellResult(number, float(x), float(y), x - half, y - half, x + half, y + half, 900.0, p,
                      {"vgg16": p})


def _result(path: Path, sha: str, cells: list[CellResult] | None, p_all: float = 0.9,
            specimen: str = "") -> ImageResult:
    findings = None if cells is None else CellFindings(tuple(cells), 0.5)
    score = Score(p_all, "ALL" if p_all >= 0.5 else "normal", False, 4, {"resnet50": p_all},
                  DomainInfo(1.0, 1, "in", 0.5, ""), findings)
    return ImageResult(path, sha, SIDE, SIDE, score, specimen=specimen)


def _info() -> RunInfo:
    return RunInfo("0", "t0", "t1", "host", "allscan predict x", "digest", [], 0.5, (0.4, 0.6))


def _render(tmp_path, results) -> str:
    counts = RunCounts()
    for r in results:
        counts.add(r)
    report = tmp_path / "report.html"
    write_report(report, results, _info(), counts)
    return report.read_text(encoding="utf-8")


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)


def _cards(text: str) -> dict[str, str]:
    """Each card's HTML by its id."""
    return {m.group(1): m.group(0) for m in
            re.finditer(r'<div class="card[^"]*" id="(card-\d+)".*?<div class="name">[^<]*</div></div>', text)}


def _tiles(text: str) -> list[tuple[str, float]]:
    return [(href, float(p)) for href, p in re.findall(r'<a class="tile" href="#(card-\d+)"[^>]*data-p="([\d.]+)"',
                                                        text)]


def test_card_shows_cell_boxes_counts_and_most_blast_like_strip(tmp_path):
    path = tmp_path / "imgs" / "field.png"
    sha = _plain_image(path)
    cells = [_cell(1, 60, 60, 0.2), _cell(2, 180, 60, 0.93), _cell(3, 60, 180, 0.71), _cell(4, 180, 180, 0.4)]
    text = _render(tmp_path, [_result(path, sha, cells)])
    _check(text)
    card = next(iter(_cards(text).values()))
    assert "cells <b>4</b> · blasts <b class=\"blast\">2</b> (50.0%)" in card
    # the strip: most blast-like first, each with its p(blast), blasts framed in the blast colour
    strip = re.findall(r'<figure><img alt="cell (\d+)" src="(data:image/jpeg;base64,[^"]+)" style="border-color:'
                       r'(#[0-9a-f]{6})"><figcaption>([\d.]+)</figcaption>', card)
    assert [(n, c, p) for n, _, c, p in strip] == [("2", BLAST_COLOUR, "0.93"), ("3", BLAST_COLOUR, "0.71"),
                                                   ("4", OTHER_COLOUR, "0.40"), ("1", OTHER_COLOUR, "0.20")]
    assert all(_decode(uri).shape == (64, 64, 3) for _, uri, _, _ in strip)
    # boxes drawn on the thumbnail (160 px for a 240-px image): blasts red, the others blue, the rest grey
    thumb = _decode(re.search(r'<img class="thumb"[^>]*src="([^"]+)"', card).group(1))
    assert thumb.shape[:2] == (160, 160)
    redness = thumb[..., 0] - thumb[..., 2]

    def top_edge(x, y):  # the red-minus-blue around the middle of a box's top edge (JPEG blurs it)
        row, column = round((y - 20) * 160 / SIDE), round(x * 160 / SIDE)
        window = redness[row - 3:row + 4, column - 2:column + 3]
        return window.max() if window.max() > -window.min() else window.min()

    assert top_edge(180, 60) > 100 and top_edge(60, 180) > 100  # blasts
    assert top_edge(60, 60) < -60 and top_edge(180, 180) < -60  # other cells
    assert np.abs(thumb[80, 80] - GREY).max() < 8  # between the cells: untouched


def test_gallery_holds_every_blast_of_the_run_sorted_and_linked_to_its_card(tmp_path):
    results = []
    for i, ps in enumerate([(0.6, 0.1), (0.95, 0.55, 0.2), (0.3,), (0.8,)]):
        path = tmp_path / "imgs" / f"img{i}.png"
        cells = [_cell(k + 1, 40 + 50 * k, 60, p) for k, p in enumerate(ps)]
        results.append(_result(path, _plain_image(path), cells, p_all=0.1 * (i + 1), specimen=f"P-{i}"))
    text = _render(tmp_path, results)
    _check(text)
    tiles = _tiles(text)
    assert [p for _, p in tiles] == [0.95, 0.8, 0.6, 0.55]  # at or above the threshold, highest first
    assert "Cell gallery (4 cells at or above the blast threshold)" in text
    cards = _cards(text)
    for (card, _), name in zip(tiles, ("img1.png", "img3.png", "img0.png", "img1.png")):
        assert f"imgs/{name}" in cards[card]  # each tile links to its own image's card
    assert all(s in text for s in ('id="pmin"', 'id="gtext"', 'data-key="', "function filterGallery"))
    assert "http://" not in text and "https://" not in text and "<script src" not in text


def test_gallery_is_capped_and_says_how_many_were_left_out(tmp_path):
    path = tmp_path / "imgs" / "many.png"
    sha = _plain_image(path)
    result = _result(path, sha, [_cell(k + 1, 30 + 20 * (k % 9), 30 + 20 * (k // 9), 0.5 + k / 100)
                                 for k in range(40)])
    tiles, total = gallery_tiles([("card-1", result)], cap=25)
    assert total == 40 and len(tiles) == 25
    assert [t.cell.p_blast for t in tiles] == sorted((0.5 + k / 100 for k in range(15, 40)), reverse=True)
    html = render_gallery(tiles, total, {})
    assert "The 25 most blast-like are shown; 15 more are left out" in html
    assert html.count('class="tile"') == 25


def test_unreadable_or_changed_image_leaves_its_crops_out_and_the_report_is_written(tmp_path):
    good = tmp_path / "imgs" / "good.png"
    gone = tmp_path / "imgs" / "gone.png"
    corrupt = tmp_path / "imgs" / "corrupt.png"
    changed = tmp_path / "imgs" / "changed.png"
    results = [_result(good, _plain_image(good), [_cell(1, 60, 60, 0.9)], 0.9),
               _result(gone, "0" * 64, [_cell(1, 60, 60, 0.8)], 0.8),
               _result(corrupt, "1" * 64, [_cell(1, 60, 60, 0.7)], 0.7)]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _plain_image(changed)
    results.append(_result(changed, "2" * 64, [_cell(1, 60, 60, 0.6)], 0.6))  # not the file's sha256
    text = _render(tmp_path, results)
    _check(text)
    cards = _cards(text)
    assert len(cards) == 4 and all("cells <b>1</b>" in c for c in cards.values())
    by_name = {Path(re.search(r'<div class="name">([^<]+)</div>', c).group(1)).name: c for c in cards.values()}
    assert "<figure>" in by_name["good.png"]
    assert all("<figure>" not in by_name[n] for n in ("gone.png", "corrupt.png", "changed.png"))
    assert "changed since it was scored" in by_name["changed.png"]
    assert len(_tiles(text)) == 4 and text.count('<div class="gone">no image</div>') == 3


def test_no_cell_views_when_cells_were_not_looked_for(tmp_path):
    path = tmp_path / "imgs" / "a.png"
    text = _render(tmp_path, [_result(path, _plain_image(path), None)])
    _check(text)
    assert 'class="cells"' not in text and 'class="strip"' not in text and 'id="gallery"' not in text
    assert "white cells" not in text and 'href="#gallery"' not in text


def test_cells_looked_for_but_none_found(tmp_path):
    path = tmp_path / "imgs" / "a.png"
    text = render_report([_result(path, _plain_image(path), [])], _info(), RunCounts(), tmp_path)
    assert "no white cells found" in text and "No cell reached the blast threshold." in text


def test_pdf_pages_carry_the_cell_counts(tmp_path):
    from allscan.results.pdf import write_pdf
    from allscan.scoring.specimens import SpecimenRule, summarise

    results = []
    for i, ps in enumerate([(0.9, 0.2, 0.1, 0.7), (0.6,)]):
        path = tmp_path / "P-001" / f"f{i}.png"
        _plain_image(path)  # two fields of one specimen, not copies of one field (a copy's cells count once)
        results.append(_result(path, f"field-{i}", [_cell(k + 1, 60, 60, p) for k, p in enumerate(ps)],
                               specimen="P-001"))
    pdf = tmp_path / "report.pdf"
    write_pdf(pdf, results, _info(), RunCounts(), summarise(results, SpecimenRule()))
    text = " ".join(PdfReader(pdf).pages[1].extract_text().split())
    assert "cells 4 · blasts 2 (50.0%)" in text and "cells 1 · blasts 1 (100.0%)" in text
    assert "white cells" in text and "3 (60.0%)" in text  # the specimen's cells over its images


@pytest.fixture()
def smear_file(tmp_path):
    path = tmp_path / "inputs" / "smear.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(disc_smear(16, (224, 224), seed=3, nuclei=4)).save(path)
    return path


def test_explain_figure_shows_the_cells_and_the_summary_counts_them(models_dir, smear_file, tmp_path, monkeypatch):
    from allscan.cli import app
    from allscan.run.explain import explain
    from allscan.scoring.pipeline import Pipeline

    pipeline = Pipeline.load(models_dir)
    figure = tmp_path / "figure.png"
    result = explain(pipeline, smear_file, figure)
    cells = result.score.cells
    assert cells is not None and cells.count >= 1 and result.heatmap == str(figure)
    pixels = np.asarray(Image.open(figure).convert("RGB")).astype(int)
    # the image panel (224 px under a 16-px label) has a box in the cell's colour around each nucleus
    top = cells.cells[0]
    colour = BLAST_COLOUR if top.p_blast >= cells.threshold else OTHER_COLOUR
    assert (pixels[16 + top.y0, top.x0:top.x1] == _rgb(colour)).all(axis=1).any()
    # and below the panels a row of cell crops, framed in their colours
    assert pixels.shape[0] > 16 + 224 + 96
    row = pixels[16 + 224:]
    assert ((row == _rgb(BLAST_COLOUR)).all(axis=2) | (row == _rgb(OTHER_COLOUR)).all(axis=2)).sum() > 4 * 96

    monkeypatch.chdir(tmp_path)
    printed = CliRunner().invoke(app, ["explain", str(smear_file), "--models", str(models_dir)])
    assert printed.exit_code == 0, printed.output
    assert f"white cells: {cells.count}; blasts {cells.blasts}" in printed.output


def test_predict_heatmap_figures_show_the_cells_too(models_dir, smear_file, tmp_path):
    from allscan.run.batch import run_batch
    from allscan.scoring.heatmaps import HeatmapOptions
    from allscan.scoring.pipeline import Pipeline

    summary = run_batch([smear_file], tmp_path / "r.csv", Pipeline.load(models_dir),
                        heatmaps=HeatmapOptions(tmp_path / "heat", every=True))
    assert summary.counts.done == 1
    figure = next((tmp_path / "heat").glob("*.png"))
    assert Image.open(figure).height > 16 + 224 + 96  # the row of cell crops below the panels


def test_explain_figure_without_cell_models_has_no_cell_row(models_dir, smear_file, tmp_path):
    from allscan.run.explain import explain
    from allscan.scoring.pipeline import Pipeline

    bare = tmp_path / "models"
    shutil.copytree(models_dir, bare, ignore=shutil.ignore_patterns("cells"))
    figure = tmp_path / "figure.png"
    result = explain(Pipeline.load(bare), smear_file, figure)
    assert result.score.cells is None
    assert Image.open(figure).height == 16 + 224


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_filters_the_gallery_and_a_tile_reveals_its_hidden_card(tmp_path):
    results = []
    for i, ps in enumerate([(0.95, 0.6), (0.7,)]):
        path = tmp_path / "imgs" / f"img{i}.png"
        results.append(_result(path, _plain_image(path), [_cell(k + 1, 60 + 100 * k, 60, p) for k, p in enumerate(ps)],
                               p_all=0.9 - 0.8 * i, specimen=f"P-{i}"))
    page = _render(tmp_path, results)
    all_card = re.search(r'href="#(card-\d+)"', page).group(1)  # the top tile's card: img0, called ALL
    page = page.replace('value="0.50">', 'value="0.65">', 1)  # as if the slider were moved
    page = page.replace("</body>", "<script>document.addEventListener('DOMContentLoaded',function(){"
                                   f"reveal('{all_card}');}});</script></body>")  # as if its tile were clicked
    moved = tmp_path / "moved.html"
    moved.write_text(page, encoding="utf-8")
    dom = _chromium(str(tmp_path / "x"), "--dump-dom", moved.as_uri() + "#verdict=normal").stdout
    tiles = re.findall(r'<a class="tile"[^>]*>', dom)
    assert [" hidden" in t for t in tiles] == [False, False, True]  # 0.95, 0.70 shown; 0.60 below the slider
    assert '<span id="gshown">2</span>' in dom
    cards = re.findall(r'<div class="card[^"]*"[^>]*>', dom)
    assert len(cards) == 2 and not any(" hidden" in c for c in cards)  # the ALL card, hidden by the filter, shown
