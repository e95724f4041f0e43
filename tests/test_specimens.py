"""Specimens: assigning images to specimens three ways, the specimen rule on a known answer, the
specimens table (CSV, Excel sheet, HTML section) and the store's migration that adds the column."""

import csv
import sqlite3
from pathlib import Path

import pytest
from openpyxl import load_workbook

from allscan.models.manifest import ManifestError
from allscan.results import schema as store_schema
from allscan.results.store import ResultStore
from allscan.results.types import COLUMNS, SPECIMEN_COLUMNS, DomainInfo, ImageResult, Score
from allscan.run.batch import run_batch
from allscan.run.specimens import OWN_BY_MAP, OWN_BY_PATTERN, Specimens, SpecimenError, read_map
from allscan.scoring.specimens import SpecimenRule, summarise
from tests.utils import store_at_schema, write_image


def _result(name: str, p: float, specimen: str, threshold: float = 0.5, domain: str = "in") -> ImageResult:
    verdict = "ALL" if p >= threshold else "normal"
    score = Score(p, verdict, False, int(p >= threshold), {"a": p}, DomainInfo(1.0, 1, domain, 0.5, ""))
    return ImageResult(Path(name), f"sha-{name}", 64, 64, score, specimen=specimen)


def test_default_specimen_is_the_folder_below_the_input(tmp_path):
    root = tmp_path / "slides"
    assign = Specimens([root])
    assert assign(root / "patient-1" / "f1.jpg").specimen == "patient-1"
    assert assign(root / "ward" / "patient-2" / "f1.jpg").specimen == "ward/patient-2"
    root.mkdir()
    assert Specimens([root])(root / "f1.jpg").specimen == "slides"


def test_pattern_takes_the_first_group_and_an_unmatched_file_is_its_own_specimen():
    assign = Specimens(pattern=r"^(ACC\d+)_")
    assert assign(Path("x/ACC0042_field3.png")).specimen == "ACC0042"
    alone = assign(Path("x/stray.png"))
    assert alone.specimen == "stray" and alone.note == OWN_BY_PATTERN
    assert Specimens(pattern=r"P\d+")(Path("a/P7-f1.png")).specimen == "P7"
    with pytest.raises(SpecimenError, match="not a regular expression"):
        Specimens(pattern="(unclosed")


def test_folders_of_one_name_under_two_inputs_stay_two_specimens(tmp_path):
    """labA/slides and labB/slides were both specimen "slides": a normal patient's fields and an ALL field
    were judged as one specimen."""
    images = [tmp_path / "labA" / "slides" / "f1.jpg", tmp_path / "labA" / "slides" / "f2.jpg",
              tmp_path / "labB" / "slides" / "f1.jpg"]
    assign = Specimens([tmp_path / "labA" / "slides", tmp_path / "labB" / "slides"]).with_images(images)
    assert [assign(p).specimen for p in images] == ["labA/slides", "labA/slides", "labB/slides"]
    nested = [tmp_path / "clinicA" / "slide1" / "f.jpg", tmp_path / "clinicB" / "slide1" / "f.jpg",
              tmp_path / "clinicB" / "slide2" / "f.jpg"]
    assign = Specimens([tmp_path / "clinicA", tmp_path / "clinicB"]).with_images(nested)
    assert [assign(p).specimen for p in nested] == ["clinicA/slide1", "clinicB/slide1", "slide2"]
    watched = Specimens([tmp_path / "in"])  # a watch meets its images one by one: the second of a name is qualified
    assert watched(tmp_path / "in" / "a.jpg").specimen == "in"
    assert watched(tmp_path / "in" / "in" / "b.jpg").specimen == "in/in"
    assert watched(tmp_path / "in" / "c.jpg").specimen == "in"


def test_an_unplaced_file_named_like_a_specimen_stays_its_own(tmp_path):
    """ACC1.jpg, unmatched by the pattern, joined specimen ACC1 (and turned it ALL); two unmatched files of one
    name in two folders were one specimen."""
    images = [tmp_path / "ACC1_a.jpg", tmp_path / "ACC1_b.jpg", tmp_path / "ACC1.jpg", tmp_path / "x" / "stray.jpg",
              tmp_path / "y" / "stray.jpg"]
    assign = Specimens(pattern=r"^(ACC\d+)_").with_images(images)
    names = [assign(p) for p in images]
    assert [a.specimen for a in names] == ["ACC1", "ACC1", f"{tmp_path.name}/ACC1.jpg", "x/stray.jpg", "y/stray.jpg"]
    assert [a.note for a in names[2:]] == [OWN_BY_PATTERN] * 3


def test_map_csv_assigns_and_refuses_missing_files_and_duplicates_naming_the_line(tmp_path):
    for name in ("f1.png", "f2.png", "f3.png"):
        write_image(tmp_path / name)
    good = tmp_path / "map.csv"
    good.write_text(f"path,specimen\nf1.png,S1\n{tmp_path / 'f2.png'},S2\n")
    assign = Specimens(mapping=read_map(good))
    assert assign(tmp_path / "f1.png").specimen == "S1" and assign(tmp_path / "f2.png").specimen == "S2"
    assert assign(tmp_path / "f3.png") == type(assign(tmp_path / "f3.png"))("f3", OWN_BY_MAP)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,specimen\nf1.png,S1\n\nnope.png,S2\n")
    with pytest.raises(SpecimenError, match=r"line 4: nope.png does not exist"):
        read_map(missing)
    twice = tmp_path / "twice.csv"
    twice.write_text(f"specimen,path\nS1,f1.png\nS2,{tmp_path / 'f1.png'}\n")
    with pytest.raises(SpecimenError, match=r"line 3: .*f1.png is listed twice"):
        read_map(twice)
    headless = tmp_path / "headless.csv"
    headless.write_text("f1.png,S1\n")
    with pytest.raises(SpecimenError, match="line 1: needs the columns path and specimen"):
        read_map(headless)


def test_a_map_saved_by_a_spreadsheet_with_semicolons_or_tabs_reads_as_with_commas(tmp_path):
    for name in ("f1.png", "f;2.png"):
        write_image(tmp_path / name)
    semicolons = tmp_path / "excel-de.csv"
    semicolons.write_bytes("\ufeffPath;Specimen\r\nf1.png;S 1\r\n\"f;2.png\";S,2\r\n".encode("utf-8"))
    tabs = tmp_path / "lis.tsv"
    tabs.write_text("specimen\tpath\nS 1\tf1.png\nS,2\tf;2.png\n")
    expected = {str(tmp_path / "f1.png"): "S 1", str(tmp_path / "f;2.png"): "S,2"}
    assert read_map(semicolons) == expected and read_map(tabs) == expected


def test_specimen_rule_on_a_known_answer():
    rule = SpecimenRule(min_all=2, top=2, threshold=0.6, review_band=(0.2, 0.8))
    results = [
        *(_result(f"a{i}", p, "A") for i, p in enumerate([0.95, 0.9, 0.1])),   # two ALL fields: ALL, sure
        *(_result(f"b{i}", p, "B") for i, p in enumerate([0.55, 0.3, 0.1])),  # one ALL field: normal, review
        *(_result(f"c{i}", p, "C") for i, p in enumerate([0.02, 0.01])),      # clearly normal
        _result("d0", 0.01, "D", domain="out"),                                # normal, but out of domain
        ImageResult(Path("e0"), "y", error="not an image", specimen="E"),     # nothing scored
    ]
    judged = {s.specimen: s for s in summarise(results, rule)}
    assert (judged["A"].verdict, judged["A"].review, judged["A"].all_) == ("ALL", False, 2)
    assert judged["A"].top_p_all == 0.95 and judged["A"].top_image == "a0"
    assert judged["A"].rule_score == pytest.approx(0.925)
    assert (judged["B"].verdict, judged["B"].review) == ("normal", True)
    assert "fewer than the rule's 2" in judged["B"].notes
    assert (judged["C"].verdict, judged["C"].review) == ("normal", False)
    assert (judged["D"].verdict, judged["D"].review, judged["D"].out_of_domain) == ("normal", True, 1)
    assert (judged["E"].verdict, judged["E"].review, judged["E"].errors) == ("error", True, 1)
    assert SpecimenRule(min_all=3, top=2, threshold=0.6).judge("A", results[:3]).verdict == "ALL"  # by the top-2 mean
    copies = [_result(f"g{i}", 0.97, "G") for i in range(3)]
    copies = [type(r)(r.path, "same", r.width, r.height, r.score, specimen="G") for r in copies]
    saved_thrice = SpecimenRule(min_all=3, top=1, threshold=0.99).judge("G", copies)
    assert (saved_thrice.verdict, saved_thrice.all_, saved_thrice.review) == ("normal", 1, True)  # one field, not 3
    assert "2 copy(ies) of an image counted once" in saved_thrice.notes and saved_thrice.images == 3
    by_one = SpecimenRule(min_all=3, top=1, threshold=0.9).judge("F", [_result("f0", 0.97, "F"),
                                                                       _result("f1", 0.1, "F")])
    assert (by_one.verdict, by_one.review) == ("ALL", True)  # was not flagged: one field decided an ALL specimen
    assert "1 image(s) called ALL, fewer than the rule's 3" in by_one.notes
    with pytest.raises(ManifestError):
        SpecimenRule(min_all=0)


def test_rule_ships_beside_the_models_and_a_bad_one_is_refused(tmp_path):
    assert SpecimenRule.load(tmp_path) == SpecimenRule()
    SpecimenRule(2, 5, 0.7, (0.1, 0.9), "val").save(tmp_path)
    assert SpecimenRule.load(tmp_path) == SpecimenRule(2, 5, 0.7, (0.1, 0.9), "val")
    (tmp_path / "specimen_rule.json").write_text('{"min_all": 1, "top": 3, "threshold": 7, "review_band": [0, 1]}')
    with pytest.raises(ManifestError, match="out of range"):
        SpecimenRule.load(tmp_path)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_run_writes_the_specimen_column_and_table(tmp_path, ensemble, suffix):
    slides = tmp_path / "slides"
    for patient, seeds in (("p1", (1, 2)), ("p2", (3, 4, 5))):
        for seed in seeds:
            write_image(slides / patient / f"f{seed}.png", seed=seed)
    out = tmp_path / f"r{suffix}"
    run_batch([slides], out, ensemble)
    if suffix == ".csv":
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        with open(f"{out}.specimens.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        assert tuple(table[0]) == SPECIMEN_COLUMNS
    else:
        book = load_workbook(out)
        sheet = book["Results"]
        rows = [dict(zip(COLUMNS, r)) for r in sheet.iter_rows(min_row=2, values_only=True)]
        specimens = book["Specimens"]
        assert tuple(c.value for c in specimens[1]) == SPECIMEN_COLUMNS
        table = [dict(zip(SPECIMEN_COLUMNS, r)) for r in specimens.iter_rows(min_row=2, values_only=True)]
        assert specimens.page_setup.orientation == "landscape" and specimens.print_title_rows == "$1:$1"
    assert {r["path"].split("/")[-2]: r["specimen"] for r in rows} == {"p1": "p1", "p2": "p2"}
    assert [(t["specimen"], int(t["images"])) for t in table] == [("p1", 2), ("p2", 3)]


def test_report_opens_with_the_specimens(tmp_path, ensemble):
    slides = tmp_path / "slides"
    write_image(slides / "p1" / "f.png")
    report = tmp_path / "report.html"
    run_batch([slides], tmp_path / "r.csv", ensemble, report=report)
    text = report.read_text()
    assert "<h2>Specimens (1)</h2>" in text and text.index("Specimens (1)") < text.index('class="card')


def test_store_of_the_previous_schema_gains_the_specimen_column(tmp_path):
    store = tmp_path / "r.csv.allscan.sqlite"
    db = store_at_schema(store, 2)
    db.execute("INSERT INTO files VALUES ('d', 'a.png', 'abc', 64, 64, 'not an image', '', '', 1, 'now')")
    db.commit()
    db.close()
    with ResultStore(store, "d") as opened:
        (row,) = opened.results()
        assert row.error == "not an image" and row.specimen == ""
        opened.set_specimens({"a.png": "S1"})
        assert next(opened.results()).specimen == "S1"
    assert sqlite3.connect(store).execute("PRAGMA user_version").fetchone()[0] == store_schema.schema_version()


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_read_results_gives_the_specimens_table_and_reads_files_from_before_specimens(tmp_path, ensemble, suffix):
    import allscan

    slides = tmp_path / "slides"
    write_image(slides / "p1" / "a.png", seed=1)
    write_image(slides / "p2" / "b.png", seed=2)
    out = tmp_path / f"r{suffix}"
    run_batch([slides], out, ensemble)
    table = allscan.read_results(out, specimens=True)
    assert tuple(table.columns) == SPECIMEN_COLUMNS and list(table.specimen) == ["p1", "p2"]
    assert str(table.images.dtype) == "Int64" and str(table.review.dtype) == "boolean"
    if suffix == ".csv":
        for before, added in (("specimen", ("specimen", "cells", "blasts", "blast_pct")),
                              ("cells", ("cells", "blasts", "blast_pct"))):
            old = tmp_path / f"before-{before}.csv"
            with open(out, newline="") as source, open(old, "w", newline="") as target:
                csv.writer(target).writerows(row[:COLUMNS.index(before)] for row in csv.reader(source))
            frame = allscan.read_results(old)
            assert tuple(frame.columns) == COLUMNS and list(frame.file) == ["a.png", "b.png"]
            assert all(frame[column].isna().all() or set(frame[column]) == {""} for column in added)
    with pytest.raises(ValueError, match="specimens table"):
        allscan.read_results(f"{out}.allscan.sqlite", specimens=True)


def _invoke(*args):
    from typer.testing import CliRunner

    from allscan.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_refuses_a_bad_map_pattern_or_pdf_before_scoring(tmp_path, models_dir):
    slides = tmp_path / "slides"
    write_image(slides / "a.png")
    bad_map = tmp_path / "map.csv"
    bad_map.write_text("path,specimen\nslides/a.png,S1\nslides/gone.png,S2\n")
    out = tmp_path / "r.csv"
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--specimens", bad_map)
    assert result.exit_code == 2 and "line 3: slides/gone.png does not exist" in result.output
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--specimen-pattern", "([a-z")
    assert result.exit_code == 2 and "not a regular expression" in result.output
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--pdf", tmp_path)
    assert result.exit_code == 2 and "PDF report" in result.output
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--pdf", tmp_path / "r.pdf", "--paper", "a3")
    assert result.exit_code == 2 and "unknown paper" in result.output
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--runtime", "tflite")
    assert result.exit_code == 2 and "--runtime must be one of" in result.output
    assert not out.exists() and not (tmp_path / "r.pdf").exists()


def test_cli_pattern_assigns_specimens_and_notes_the_unmatched(tmp_path, models_dir):
    slides = tmp_path / "slides"
    for name in ("ACC1_f1.png", "ACC1_f2.png", "ACC2_f1.png", "stray.png"):
        write_image(slides / name, seed=len(name))
    out = tmp_path / "r.csv"
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "--specimen-pattern", r"^(ACC\d+)_",
                     "--quiet", "--pdf", tmp_path / "r.pdf")
    assert result.exit_code == 0, result.output
    with open(f"{out}.specimens.csv", newline="") as handle:
        table = {row["specimen"]: row for row in csv.DictReader(handle)}
    assert sorted(table) == ["ACC1", "ACC2", "stray"]
    assert table["ACC1"]["images"] == "2" and OWN_BY_PATTERN in table["stray"]["notes"]
    assert (tmp_path / "r.pdf").is_file()
