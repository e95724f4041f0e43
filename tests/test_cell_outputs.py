"""The cells in the outputs: the cell table (CSV and the Excel ``Cells`` sheet), GeoJSON for QuPath, the store
(its schema step and round trip), ``--no-cells``, the API's second DataFrame and bad ``--cells-geojson``."""

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import load_workbook
from PIL import Image

import allscan
from allscan.results import schema as store_schema
from allscan.results.frames import ResultsFileError
from allscan.results.geojson import feature_collection
from allscan.results.store import ResultStore
from allscan.results.types import CELL_COLUMNS, COLUMNS, CellFindings, CellResult, ImageResult, Score
from allscan.run.batch import run_batch
from tests.test_watch import Running
from tests.utils import cli_process, disc_smear, store_at_schema

FIXTURES = Path(__file__).parent / "fixtures"
NUCLEI = {"one.png": 1, "four.png": 4, "three.png": 3}
"""Synthetic smears and the dark nuclei drawn in each (the finder finds each one)."""


def _smears(folder: Path) -> Path:
    for i, (name, nuclei) in enumerate(NUCLEI.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(disc_smear(16, (224, 224), seed=i, nuclei=nuclei)).save(path)
    return folder


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _invoke(*args):
    from typer.testing import CliRunner

    from allscan.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _cell(number: int, p_blast: float, x0: int = 10) -> CellResult:
    return CellResult(number, x0 + 5.0, 15.0, x0, 10, x0 + 10, 20, 78.5, p_blast,
                      {"vgg16": p_blast})


def _scored(path: str, sha256: str, cells: CellFindings | None) -> ImageResult:
    score = Score(0.2, "normal", False, 0, {"resnet50": 0.2}, cells=cells)
    return ImageResult(Path(path), sha256, 64, 64, score)


# ---- the cell table ------------------------------------------------------------------------------------------


def test_csv_run_writes_one_cell_row_per_cell_in_the_results_order(tmp_path, ensemble):
    out = tmp_path / "r.csv"
    run_batch([_smears(tmp_path / "slides")], out, ensemble)
    results = _csv(out)
    table = _csv(f"{out}.cells.csv")
    assert tuple(table[0]) == CELL_COLUMNS
    found = {Path(r["path"]).name: int(r["cells"]) for r in results}
    assert found == NUCLEI
    assert [r["path"] for r in table] == [r["path"] for r in results for _ in range(int(r["cells"]))]
    for result in results:
        cells = [c for c in table if c["path"] == result["path"]]
        assert [int(c["cell"]) for c in cells] == list(range(1, len(cells) + 1))
        assert all(c["sha256"] == result["sha256"] for c in cells)
        assert all(0 <= int(c["x0"]) <= float(c["x"]) < int(c["x1"]) <= int(result["width"]) for c in cells)
        assert all(0 <= int(c["y0"]) <= float(c["y"]) < int(c["y1"]) <= int(result["height"]) for c in cells)
        assert int(result["blasts"]) == sum(float(c["p_blast"]) >= 0.5 for c in cells)
        if cells:  # a percentage to 2 decimals, as a lab reports it (it was 66.66666666666667)
            assert result["blast_pct"] == f"{100 * int(result['blasts']) / len(cells):.2f}"
    assert json.loads(Path(f"{out}.run.json").read_text())["cells"]["looked_for"] is True


def test_workbook_has_a_cells_sheet_and_the_cell_models_in_its_run_sheet(tmp_path, ensemble):
    out = tmp_path / "r.xlsx"
    run_batch([_smears(tmp_path / "slides")], out, ensemble)
    book = load_workbook(out)
    assert book.sheetnames == ["Results", "Specimens", "Cells", "Run", "Summary"]
    sheet = book["Cells"]
    assert tuple(c.value for c in sheet[1]) == CELL_COLUMNS
    rows = [dict(zip(CELL_COLUMNS, r)) for r in sheet.iter_rows(min_row=2, values_only=True)]
    assert len(rows) == sum(NUCLEI.values()) and sheet.freeze_panes == "A2"
    assert isinstance(rows[0]["p_blast"], float) and isinstance(rows[0]["x0"], int)
    (blasts,) = sheet.conditional_formatting  # blast rows red: p_blast (column K) at or above the threshold
    last = chr(ord("A") + len(CELL_COLUMNS) - 1)
    assert str(blasts.sqref) == f"A2:{last}{len(rows) + 1}" and blasts.rules[0].formula == ["$K2>=0.5"]
    run = {row[0]: row[1] for row in book["Run"].iter_rows(values_only=True)}
    assert run["cells"] == "looked for" and run["cell threshold"] == 0.5
    assert run["cell models digest"] and run["count cells"] == sum(NUCLEI.values())


def test_an_edited_cell_table_with_a_bad_value_is_refused_naming_row_and_column(tmp_path, ensemble):
    out = tmp_path / "r.csv"
    run_batch([_smears(tmp_path / "slides")], out, ensemble)
    table = Path(f"{out}.cells.csv")
    lines = table.read_text().splitlines()
    row = lines[2].split(",")
    row[CELL_COLUMNS.index("p_blast")] = "1.7"
    table.write_text("\n".join([*lines[:2], ",".join(row), *lines[3:]]) + "\n")
    with pytest.raises(ResultsFileError, match=r"cells.csv, row 3, column p_blast: '1.7' is not a probability"):
        allscan.read_results(out, cells=True)


# ---- GeoJSON for QuPath -------------------------------------------------------------------------------------


def test_geojson_per_image_holds_each_cell_as_a_qupath_detection(tmp_path, ensemble):
    out, folder = tmp_path / "r.csv", tmp_path / "geojson"
    run_batch([_smears(tmp_path / "slides")], out, ensemble, cells_geojson=folder)
    results = {Path(r["path"]).name: r for r in _csv(out)}
    table = _csv(f"{out}.cells.csv")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{Path(name).stem}-{r['sha256'][:10]}.geojson" for name, r in results.items())
    for name, result in results.items():
        collection = json.loads((folder / f"{Path(name).stem}-{result['sha256'][:10]}.geojson").read_text())
        assert collection["type"] == "FeatureCollection" and len(collection["features"]) == NUCLEI[name]
        cells = [c for c in table if c["path"] == result["path"]]
        for feature, cell in zip(collection["features"], cells):
            x0, y0, x1, y1 = (int(cell[k]) for k in ("x0", "y0", "x1", "y1"))
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
            assert feature["geometry"]["coordinates"] == [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]
            properties = feature["properties"]
            assert properties["objectType"] == "detection"
            assert properties["classification"]["name"] == ("Blast" if float(cell["p_blast"]) >= 0.5 else "Other")
            assert len(properties["classification"]["color"]) == 3
            measurements = properties["measurements"]
            assert set(measurements) == {"cell", "p_blast", "p_blast_vgg16", "nucleus_area_px"}
            assert measurements["cell"] == int(cell["cell"])
            assert measurements["p_blast"] == pytest.approx(float(cell["p_blast"]), abs=1e-4)


def test_geojson_classes_each_cell_by_the_cell_threshold():
    findings = CellFindings((_cell(1, 0.2), _cell(2, 0.5, x0=40), _cell(3, 0.9, x0=70)), threshold=0.5)
    features = feature_collection(findings)["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["Other", "Blast", "Blast"]
    assert features[0]["properties"]["classification"]["color"] != features[1]["properties"]["classification"]["color"]
    assert feature_collection(CellFindings((), 0.5)) == {"type": "FeatureCollection", "features": []}


def test_watch_writes_each_arrivals_geojson_as_it_is_stored_and_the_cell_table_at_stop(tmp_path, ensemble):
    incoming, out, folder = tmp_path / "incoming", tmp_path / "r.csv", tmp_path / "geojson"
    incoming.mkdir()
    with Running(ensemble, incoming, out, cells_geojson=folder) as run:
        _smears(tmp_path / "staging")
        for name in NUCLEI:
            shutil.move(tmp_path / "staging" / name, incoming / name)
        run.wait_for(len(NUCLEI))
        assert len(list(folder.glob("*.geojson"))) == len(NUCLEI)
    table = _csv(f"{out}.cells.csv")
    assert {Path(p).name: n for p, n in pd.Series([c["path"] for c in table]).value_counts().items()} == NUCLEI


# ---- the store ---------------------------------------------------------------------------------------------


def test_store_tells_no_cells_found_from_cells_not_looked_for(tmp_path):
    path = tmp_path / "r.csv.allscan.sqlite"
    two = CellFindings((_cell(1, 0.3), _cell(2, 0.8, x0=40)), 0.6)
    with ResultStore(path, "d") as store:
        store.add([_scored("a.png", "aa", None), _scored("b.png", "bb", CellFindings((), 0.6)),
                   _scored("c.png", "cc", CellFindings(tuple(_cell(n, 0.1) for n in (1, 2, 3)), 0.6))])
        store.add([_scored("c.png", "cc", two)])  # scored again: its cells replace the old ones
    with ResultStore(path, "d", writer=False) as store:
        cells = {r.path.name: r.score.cells for r in store.results()}
        assert store.score_for("cc").cells == two
    assert cells == {"a.png": None, "b.png": CellFindings((), 0.6), "c.png": two}


def test_rerun_over_stored_images_gives_identical_rows_cells_and_geojson(tmp_path, ensemble, models_dir):
    slides, out, folder = _smears(tmp_path / "slides"), tmp_path / "r.csv", tmp_path / "geojson"
    run_batch([slides], out, ensemble, cells_geojson=folder)
    first = {p: p.read_bytes() for p in (out, Path(f"{out}.cells.csv"))}
    figures = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    summary = run_batch([slides], out, ensemble, cells_geojson=folder)
    assert summary.counts.skipped == len(NUCLEI)
    assert {p: p.read_bytes() for p in first} == first
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == figures
    stored, stored_cells = allscan.read_results(f"{out}.allscan.sqlite", cells=True)
    fresh, fresh_cells = allscan.predict([slides], models=models_dir, cells=True)
    pd.testing.assert_frame_equal(stored_cells, fresh_cells)
    pd.testing.assert_frame_equal(stored.drop(columns="specimen"), fresh.drop(columns="specimen"))


def test_schema_3_store_migrates_and_its_scores_read_as_scored_without_cells(tmp_path):
    path = tmp_path / "r.csv.allscan.sqlite"
    db = store_at_schema(path, 3)
    db.execute("INSERT INTO scores VALUES ('d', 'aa', 0.9, 'ALL', 0, 4, '{\"resnet50\": 0.9}', 1.0, 2, 'in', 0.5, '')")
    db.execute("INSERT INTO files VALUES ('d', 'a.png', 'aa', 64, 64, '', '', '', 1, 'now', 'S1')")
    db.commit()
    db.close()
    with ResultStore(path, "d") as store:
        (old,) = store.results()
        assert old.score.p_all == 0.9 and old.score.cells is None and old.specimen == "S1"
        assert old.row()["cells"] is None and old.cell_rows() == []
        found = CellFindings((_cell(1, 0.7),), 0.5)
        store.add([_scored("b.png", "bb", found)])
        assert store.score_for("bb").cells == found
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == store_schema.schema_version()


def test_store_of_allscan_0_1_0_gains_the_cells(tmp_path):
    path = tmp_path / "old.csv.allscan.sqlite"
    shutil.copy(FIXTURES / "store-0.1.0.sqlite", path)
    (digest,) = sqlite3.connect(path).execute("SELECT DISTINCT digest FROM files").fetchone()
    with ResultStore(path, digest) as store:
        assert all(r.score is None or r.score.cells is None for r in store.results())
        store.add([_scored("slides/new.png", "new", CellFindings((_cell(1, 0.4),), 0.5))])
        assert store.score_for("new").cells.count == 1


# ---- --no-cells, the API and bad options ----------------------------------------------------------------


def test_no_cells_writes_no_cell_table_and_removes_one_left_by_a_run_with_cells(tmp_path, models_dir):
    slides, out = _smears(tmp_path / "slides"), tmp_path / "r.csv"
    assert _invoke("predict", slides, "-o", out, "--models", models_dir, "-q").exit_code == 0
    assert Path(f"{out}.cells.csv").is_file()
    result = _invoke("predict", slides, "-o", out, "--models", models_dir, "-q", "--no-cells")
    assert result.exit_code == 0, result.output
    assert not Path(f"{out}.cells.csv").exists()
    rows = _csv(out)
    assert len(rows) == len(NUCLEI) and {(r["cells"], r["blasts"], r["blast_pct"]) for r in rows} == {("", "", "")}
    assert json.loads(Path(f"{out}.run.json").read_text())["cells"] == {"looked_for": False}
    with pytest.raises(FileNotFoundError, match="no cell table beside"):
        allscan.read_results(out, cells=True)
    xlsx = tmp_path / "r.xlsx"
    assert _invoke("predict", slides, "-o", xlsx, "--models", models_dir, "-q", "--no-cells").exit_code == 0
    assert "Cells" not in load_workbook(xlsx).sheetnames
    with pytest.raises(ResultsFileError, match="has no Cells sheet"):
        allscan.read_results(xlsx, cells=True)


def test_api_returns_the_cells_as_a_second_frame(tmp_path, models_dir):
    slides = _smears(tmp_path / "slides")
    frame = allscan.predict([slides], models=models_dir)
    assert isinstance(frame, pd.DataFrame) and tuple(frame.columns) == COLUMNS
    results, cells = allscan.predict([slides], models=models_dir, cells=True)
    assert tuple(cells.columns) == CELL_COLUMNS and str(cells.cell.dtype) == "Int64"
    assert cells.groupby("path").size().to_dict() == dict(zip(results.path, results.cells))
    assert list(cells.path.drop_duplicates()) == list(results.path)
    empty, no_cells = allscan.predict([], cells=True)
    assert len(empty) == len(no_cells) == 0 and tuple(no_cells.columns) == CELL_COLUMNS
    without = allscan.load(models_dir, find_cells=False)
    results, cells = without.predict([slides], cells=True)
    assert results.cells.isna().all() and len(cells) == 0
    for suffix in (".csv", ".xlsx"):
        out = tmp_path / f"r{suffix}"
        written, written_cells = allscan.predict([slides], models=models_dir, out=out, cells=True)
        read, read_cells = allscan.read_results(out, cells=True)
        pd.testing.assert_frame_equal(read_cells, written_cells, atol=1e-4)
        assert list(read.cells) == list(written.cells)
    with pytest.raises(ValueError, match="not both"):
        allscan.read_results(tmp_path / "r.csv", specimens=True, cells=True)


def test_bad_cells_geojson_is_refused_in_one_line_before_the_models_load(tmp_path, models_copy):
    slides, out = _smears(tmp_path / "slides"), tmp_path / "r.csv"
    a_file = tmp_path / "taken"
    a_file.write_text("")
    code, lines, _, tensorflow = cli_process("predict", slides, "-o", out, "--models", models_copy,
                                             "--cells-geojson", a_file)
    assert code == 2 and len(lines) == 1 and "cells GeoJSON folder" in lines[0] and "is a file" in lines[0]
    assert not tensorflow
    result = _invoke("predict", slides, "-o", out, "--models", models_copy, "--cells-geojson", a_file / "sub")
    assert result.exit_code == 2 and "cannot write in the cells GeoJSON folder" in result.output
    result = _invoke("predict", slides, "-o", out, "--models", models_copy, "--no-cells",
                     "--cells-geojson", tmp_path / "g")
    assert result.exit_code == 2 and "drop --no-cells" in result.output
    shutil.rmtree(models_copy / "cells")
    result = _invoke("predict", slides, "-o", out, "--models", models_copy, "--cells-geojson", tmp_path / "g")
    assert result.exit_code == 2 and "without a cell classifier" in result.output
    assert not out.exists()


def test_the_run_summary_counts_the_cells_and_blasts(tmp_path, models_dir):
    slides = _smears(tmp_path / "slides")
    result = _invoke("predict", slides, "-o", tmp_path / "r.csv", "--models", models_dir)
    assert result.exit_code == 0, result.output
    cells = _csv(Path(f"{tmp_path / 'r.csv'}.cells.csv"))
    blasts = sum(float(c["p_blast"]) >= 0.5 for c in cells)
    table = " ".join(result.output.split())  # the summary table, its padding collapsed
    assert f"white cells found │ {len(cells)}" in table
    assert f"blasts among them │ {blasts} ({100 * blasts / len(cells):.1f}%)" in table
    quiet = _invoke("predict", slides, "-o", tmp_path / "n.csv", "--models", models_dir, "--no-cells")
    assert "white cells" not in quiet.output
