"""What a run writes tells the lab the truth, the same way in every output: the results file and its side
files, the workbook's sheets, the HTML and PDF reports."""

import csv
import json
from pathlib import Path

from openpyxl import load_workbook
from pypdf import PdfReader

from allscan.results.pdf import PdfReport
from allscan.results.types import NOT_SCORED
from allscan.run.batch import run_batch
from tests.utils import CtrlCAfter, write_image


def _slides(root):
    """Two specimens of four fields each: ``P-1`` is scored first, ``P-2`` after."""
    for first, specimen in ((0, "P-1"), (10, "P-2")):
        for i in range(4):
            write_image(root / specimen / f"field{i}.png", seed=first + i)
    return root


def _rows(out):
    with open(out, newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def _specimens(out):
    with open(f"{out}.specimens.csv", newline="", encoding="utf-8") as handle:
        return {row["specimen"]: row for row in csv.DictReader(handle)}


def _pdf_text(path):
    """The PDF's text, its lines joined by single spaces (a phrase may wrap)."""
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(path).pages)


def test_an_interrupted_run_says_so_in_its_files_and_reports_and_flags_the_specimens_it_did_not_finish(
        tmp_path, ensemble):
    slides = _slides(tmp_path / "slides")
    out, report, pdf = tmp_path / "r.csv", tmp_path / "report.html", tmp_path / "report.pdf"
    summary = run_batch([slides], out, ensemble, batch_size=1, workers=1, observer=CtrlCAfter(3), report=report,
                        pdf=PdfReport(pdf))
    assert summary.interrupted and summary.counts.done == 3
    counts = json.loads(out.with_name("r.csv.run.json").read_text())["counts"]
    assert counts["images"] == 3 and counts[NOT_SCORED] == 5
    specimens = _specimens(out)
    assert sum(int(s["images"]) for s in specimens.values()) == 8  # every image found, scored or not
    assert specimens["P-1"]["images"] == "4" and specimens["P-1"]["scored"] == "3"
    assert specimens["P-1"]["review"] == "true" and "1 image(s) not scored yet" in specimens["P-1"]["notes"]
    assert specimens["P-2"]["verdict"] == "error" and specimens["P-2"]["images"] == "4"
    assert "4 image(s) not scored yet" in specimens["P-2"]["notes"]
    assert "no image could be scored" not in specimens["P-2"]["notes"]  # nothing failed: it was not reached
    assert "This run was interrupted: 3 of its 8 images were scored" in report.read_text()
    text = _pdf_text(pdf)
    assert "This run was interrupted" in text and "P-2" in text
    assert "No image of this specimen was scored before the run was interrupted" in text

    run_batch([slides], out, ensemble, report=report, pdf=PdfReport(pdf))  # the rerun finishes the job
    counts = json.loads(out.with_name("r.csv.run.json").read_text())["counts"]
    assert counts["images"] == 8 and NOT_SCORED not in counts
    assert all("not scored yet" not in s["notes"] for s in _specimens(out).values())
    assert "This run was interrupted" not in report.read_text() + _pdf_text(pdf)


def test_an_interrupted_workbook_counts_what_it_did_not_score_in_its_summary_and_run_sheets(tmp_path, ensemble):
    slides = _slides(tmp_path / "slides")
    out = tmp_path / "r.xlsx"
    run_batch([slides], out, ensemble, batch_size=1, workers=1, observer=CtrlCAfter(2))
    book = load_workbook(out)
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True) if row and row[0]}
    run = {row[0]: row[1] for row in book["Run"].iter_rows(values_only=True)}
    assert summary["total"] == 2 and summary[NOT_SCORED] == 6 and run[f"count {NOT_SCORED}"] == 6
    specimens = {row[0]: row for row in book["Specimens"].iter_rows(min_row=2, values_only=True)}
    assert {name: row[3] for name, row in specimens.items()} == {"P-1": 4, "P-2": 4}


def _cells(n, blasts):
    from allscan.results.types import CellFindings, CellResult

    return CellFindings(tuple(CellResult(i + 1, 10.0, 10.0, 5, 5, 15, 15, 80.0, 0.9 if i < blasts else 0.1, {})
                              for i in range(n)), 0.5)


def test_a_specimens_printed_cell_counts_count_a_copy_of_an_image_once_as_its_image_counts_do(tmp_path):
    from allscan.results.pdf import write_pdf
    from allscan.results.tables import RunInfo
    from allscan.results.types import DomainInfo, ImageResult, RunCounts, Score
    from allscan.scoring.specimens import SpecimenRule, summarise

    score = Score(0.9, "ALL", False, 4, {"a": 0.9}, DomainInfo(1.0, 1, "in", 0.5, ""), _cells(7, 3))
    other = Score(0.1, "normal", False, 0, {"a": 0.1}, DomainInfo(1.0, 1, "in", 0.5, ""), _cells(4, 0))
    results = [ImageResult(tmp_path / "S" / "a.png", "same", 64, 64, score, specimen="S"),
               ImageResult(tmp_path / "S" / "copy-of-a.png", "same", 64, 64, score, specimen="S"),
               ImageResult(tmp_path / "S" / "c.png", "other", 64, 64, other, specimen="S")]
    judged = summarise(results, SpecimenRule())
    assert (judged[0].images, judged[0].scored, judged[0].all_) == (3, 2, 1)  # the copy counted once
    info = RunInfo("0", "start", "end", "host", "cmd", "digest", [], 0.3, (0.05, 0.95))
    pdf = tmp_path / "report.pdf"
    write_pdf(pdf, results, info, RunCounts(), judged)
    page = PdfReader(pdf).pages[1].extract_text().split()
    figures = page[page.index("blasts") + 1:]  # the specimen's figures follow their header row
    assert figures[:12] == ["3", "1", "1", "0", "0", "0", "0.900", "0.500", "11", "3", "(27.3%)", "Notes:"]


def test_the_html_report_names_the_site_profile_whose_threshold_it_shows_as_the_pdf_does(tmp_path):
    from allscan.results.pdf import write_pdf
    from allscan.results.report import render_report
    from allscan.results.tables import RunInfo
    from allscan.results.types import RunCounts

    site = {"site": {"digest": "5e1fd1ge57", "source": "our-labelled"}}
    info = RunInfo("0", "start", "end", "host", "cmd", "digest", [], 0.41, (0.4, 0.42), domain=site)
    page = render_report([], info, RunCounts(), tmp_path)
    assert "<td>threshold</td><td>0.410</td>" in page
    assert "<td>site profile</td><td>5e1fd1ge57 (our-labelled)</td>" in page
    write_pdf(tmp_path / "r.pdf", [], info, RunCounts(), [])
    assert "5e1fd1ge57 (our-labelled)" in PdfReader(tmp_path / "r.pdf").pages[0].extract_text()
    plain = RunInfo("0", "start", "end", "host", "cmd", "digest", [], 0.26, (0.05, 0.95))
    assert "<td>site profile</td><td>none</td>" in render_report([], plain, RunCounts(), tmp_path)


def test_a_copy_whose_original_was_deleted_is_no_longer_called_its_duplicate(tmp_path, ensemble):
    slides = tmp_path / "slides"
    original = write_image(slides / "a.png", seed=1)
    (slides / "b.png").write_bytes(original.read_bytes())
    write_image(slides / "c.png", seed=2)
    (slides / "d.png").write_bytes((slides / "c.png").read_bytes())
    out = tmp_path / "r.csv"
    run_batch([slides], out, ensemble)
    rows = _rows(out)
    assert rows["b.png"]["duplicate_of"] == str(original) and rows["d.png"]["duplicate_of"].endswith("c.png")
    original.unlink()  # the lab deletes the first of two copies
    run_batch([slides], out, ensemble)
    rows = _rows(out)
    assert set(rows) == {"b.png", "c.png", "d.png"}
    assert rows["b.png"]["duplicate_of"] == ""  # a pointer to a row and a file that are gone would drop it
    assert rows["d.png"]["duplicate_of"].endswith("c.png")  # a copy whose original is there stays one


def test_every_output_states_the_specimen_rule_its_rule_scores_are_compared_with(tmp_path, models_copy):
    from allscan.scoring.pipeline import Pipeline
    from allscan.scoring.specimens import SpecimenRule

    SpecimenRule(3, 5, 0.3, (0.05, 0.95), "test").save(models_copy)  # as shipped: not the images' threshold
    slides = _slides(tmp_path / "slides")
    out, report, pdf = tmp_path / "r.csv", tmp_path / "report.html", tmp_path / "report.pdf"
    pipeline = Pipeline.load(models_copy)
    run_batch([slides], out, pipeline, report=report, pdf=PdfReport(pdf))
    rule = json.loads(out.with_name("r.csv.run.json").read_text())["specimen_rule"]
    assert (rule["min_all"], rule["top"], rule["threshold"], rule["review_band"]) == (3, 5, 0.3, [0.05, 0.95])
    said = ("ALL when at least 3 images are called ALL or the rule score (the mean p(ALL) of its 5 most suspicious "
            "images) is at least 0.300")
    assert said in report.read_text()
    assert said in " ".join(PdfReader(pdf).pages[0].extract_text().split())
    run_batch([slides], tmp_path / "r.xlsx", pipeline)
    run = {row[0]: row[1] for row in load_workbook(tmp_path / "r.xlsx")["Run"].iter_rows(values_only=True)}
    assert run["specimen rule"].startswith(said)


def test_a_heatmap_figure_labels_p_all_and_p_blast_apart_and_its_blast_threshold_as_its_cells_are_shown(
        monkeypatch):
    import numpy as np
    from PIL import ImageDraw

    from allscan.results.figures import CellView, heatmap_figure
    from allscan.results.types import CellFindings, CellResult

    written, draw_text = [], ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        written.append(words)
        return draw_text(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    blast = CellResult(1, 20.0, 20.0, 10, 10, 30, 30, 300.0, 0.479, {"vgg16": 0.479})  # a blast at 0.4781
    cells = CellView(CellFindings((blast,), 0.4781), 1.0, np.zeros((1, 32, 32, 3), np.uint8))
    rgb = np.full((64, 64, 3), 200, np.uint8)
    heatmap_figure(rgb, np.zeros((64, 64)), {"alexnet": np.zeros((8, 8))}, {"alexnet": 0.9}, 0.8, cells)
    assert "ensemble p(ALL)=0.800" in written and "alexnet p(ALL)=0.900" in written
    assert "p=0.479" in written  # framed as a blast...
    assert any(text.endswith("(a blast at p(blast) >= 0.478)") for text in written)  # ...and not below the bar


def test_each_report_card_names_the_specimen_its_image_was_placed_in_by_a_pattern(tmp_path, ensemble):
    import re

    from allscan.run.specimens import Specimens

    slides = tmp_path / "slides"
    for name, seed in (("ACC0042_f1.png", 1), ("ACC0042_f2.png", 2), ("ACC0077_f1.png", 3)):
        write_image(slides / name, seed=seed)
    report = tmp_path / "report.html"
    run_batch([slides], tmp_path / "r.csv", ensemble, report=report,
              specimens=Specimens([slides], pattern=r"^(ACC\d+)_"))
    cards = re.findall(r'<div class="card .*?</div></div>(?=<div class="card|</section>)', report.read_text())
    assert len(cards) == 3
    for card in cards:
        path = re.findall(r'<div class="name">([^<]*)</div>', card)[-1]
        assert f"specimen <b>{Path(path).name.split('_')[0]}</b>" in card  # as its specimens table names it
