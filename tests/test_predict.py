"""allscan predict end to end through the library API: rows, schema, bad input, resume, safety."""

import csv
import json
import shutil

import pytest
from openpyxl import load_workbook

from allscan.scoring.pipeline import as_pipeline
from allscan.run.batch import run_batch
from allscan.results.types import COLUMNS
from allscan.results.store import ResultStore, store_path_for
from tests.utils import write_image


@pytest.fixture()
def slides(tmp_path):
    folder = tmp_path / "slides"
    for i in range(5):
        write_image(folder / f"field{i}.png", seed=i)
    for i in range(3):
        write_image(folder / "day2" / f"field{i}.jpg", seed=10 + i, fmt="JPEG")
    return folder


def _csv_rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_image_in_schema_order(slides, ensemble, tmp_path):
    out = tmp_path / "results.csv"
    summary = run_batch([slides], out, ensemble)
    assert summary.exit_code == 0
    with open(out, encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == list(COLUMNS)
    rows = _csv_rows(out)
    assert len(rows) == 8
    weights = ensemble.manifest.ensemble.weights
    for row in rows:
        assert row["verdict"] in ("ALL", "normal") and row["error"] == ""
        per_model = {n: float(row[f"p_all_{n}"]) for n in weights}
        expected = sum(weights[n] * p for n, p in per_model.items()) / sum(weights.values())
        assert float(row["p_all"]) == pytest.approx(expected, abs=2e-4)
        assert (row["verdict"] == "ALL") == (float(row["p_all"]) >= ensemble.manifest.ensemble.threshold)
        assert int(row["agreement"]) == sum(p >= 0.5 for p in per_model.values())
        assert len(row["sha256"]) == 64 and row["width"] == "64"
    sidecar = json.loads((tmp_path / "results.csv.run.json").read_text())
    assert sidecar["models_digest"] == ensemble.manifest.digest
    assert sidecar["counts"]["images"] == 8


def test_batching_does_not_change_scores(slides, ensemble, tmp_path):
    run_batch([slides], tmp_path / "a.csv", ensemble, batch_size=1)
    run_batch([slides], tmp_path / "b.csv", ensemble, batch_size=7, workers=3)
    a, b = _csv_rows(tmp_path / "a.csv"), _csv_rows(tmp_path / "b.csv")
    assert [r["p_all"] for r in a] == [r["p_all"] for r in b]


def test_no_recursive_stays_flat(slides, ensemble, tmp_path):
    run_batch([slides], tmp_path / "r.csv", ensemble, recursive=False)
    assert len(_csv_rows(tmp_path / "r.csv")) == 5


def test_excel_has_four_formatted_sheets(slides, ensemble, tmp_path):
    out = tmp_path / "results.xlsx"
    run_batch([slides], out, ensemble)
    book = load_workbook(out)
    assert book.sheetnames == ["Results", "Specimens", "Cells", "Run", "Summary"]
    sheet = book["Results"]
    assert [c.value for c in sheet[1]] == list(COLUMNS)
    assert sheet.max_row == 9
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{sheet.cell(1, len(COLUMNS)).column_letter}9"
    p_col = COLUMNS.index("p_all") + 1
    assert isinstance(sheet.cell(2, p_col).value, float)
    assert sheet.cell(2, p_col).number_format == "0.000"
    run = {row[0]: row[1] for row in book["Run"].iter_rows(values_only=True)}
    assert run["models digest"] == ensemble.manifest.digest
    assert run["count images"] == 8
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True) if row}
    assert summary["ALL"] + summary["normal"] == 8 and summary["total"] == 8


def test_bad_images_become_error_rows_and_run_goes_on(slides, ensemble, tmp_path):
    (slides / "empty.png").write_bytes(b"")
    (slides / "notes.jpg").write_text("not an image")
    good = (slides / "field0.png").read_bytes()
    (slides / "truncated.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "results.csv"
    summary = run_batch([slides], out, ensemble)
    assert summary.exit_code == 1
    rows = {r["file"]: r for r in _csv_rows(out)}
    assert len(rows) == 11
    for name, reason in [("empty.png", "empty"), ("notes.jpg", "not a recognised"), ("truncated.png", "truncated")]:
        assert rows[name]["verdict"] == "error"
        assert reason in rows[name]["error"]
        assert rows[name]["p_all"] == ""
    assert sum(r["verdict"] != "error" for r in rows.values()) == 8


def test_rerun_skips_scored_images_and_rescore_forces(slides, ensemble, tmp_path):
    out = tmp_path / "results.csv"
    first = run_batch([slides], out, ensemble)
    assert first.counts.skipped == 0
    write_image(slides / "new.png", seed=99)
    second = run_batch([slides], out, ensemble)
    assert second.counts.skipped == 8 and second.counts.done == 9
    assert len(_csv_rows(out)) == 9
    third = run_batch([slides], out, ensemble, rescore=True)
    assert third.counts.skipped == 0


def test_copy_under_new_name_reuses_score(slides, ensemble, tmp_path):
    shutil.copy(slides / "field1.png", slides / "copy-of-field1.png")
    out = tmp_path / "results.csv"
    run_batch([slides], out, ensemble)
    rows = {r["file"]: r for r in _csv_rows(out)}
    assert rows["copy-of-field1.png"]["p_all"] == rows["field1.png"]["p_all"]
    # Sorted order meets the copy first, so the original is marked as its duplicate.
    assert rows["field1.png"]["duplicate_of"] == str(slides / "copy-of-field1.png")
    assert rows["copy-of-field1.png"]["duplicate_of"] == rows["field0.png"]["duplicate_of"] == ""
    run_batch([slides], out, ensemble, batch_size=1, rescore=True)
    assert _csv_rows(out) == list(rows.values())


class _CrashAfter:
    """Observer that simulates the process dying after ``n`` reported results."""

    def __init__(self, n):
        self.n, self.seen = n, []

    def start(self, total):
        pass

    def result(self, result, skipped):
        self.seen.append(result.path)
        if len(self.seen) == self.n:
            raise SystemExit("killed")


def test_crash_midway_then_rerun_loses_and_duplicates_nothing(slides, ensemble, tmp_path):
    out = tmp_path / "results.csv"
    with pytest.raises(SystemExit):
        run_batch([slides], out, ensemble, batch_size=2, observer=_CrashAfter(3))
    # Every reported result was durable before it was reported.
    with ResultStore(store_path_for(out), as_pipeline(ensemble).digest) as store:
        assert len(list(store.results())) >= 3
    summary = run_batch([slides], out, ensemble, batch_size=2)
    rows = _csv_rows(out)
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in slides.rglob("*.*g"))
    assert len({r["path"] for r in rows}) == len(rows) == 8
    assert summary.counts.skipped >= 3


def test_outputs_are_never_read_as_inputs(slides, ensemble):
    out = slides / "results.csv"
    run_batch([slides], out, ensemble)
    run_batch([slides], out, ensemble)
    assert len(_csv_rows(out)) == 8


def test_formula_like_file_names_are_neutralised(tmp_path, ensemble):
    folder = tmp_path / "in"
    write_image(folder / "=HYPERLINK(1).png")
    out = tmp_path / "results.xlsx"
    run_batch([folder], out, ensemble)
    cell = load_workbook(out)["Results"].cell(2, COLUMNS.index("file") + 1)
    assert cell.data_type == "s" and cell.value == "'=HYPERLINK(1).png"
    run_batch([folder], tmp_path / "results.csv", ensemble)
    assert _csv_rows(tmp_path / "results.csv")[0]["file"] == "'=HYPERLINK(1).png"


def test_unknown_suffix_and_missing_input_are_refused(slides, ensemble, tmp_path):
    with pytest.raises(ValueError, match="unknown output suffix"):
        run_batch([slides], tmp_path / "results.txt", ensemble)
    with pytest.raises(FileNotFoundError):
        run_batch([tmp_path / "nope"], tmp_path / "r.csv", ensemble)


class _CtrlCAfter(_CrashAfter):
    def result(self, result, skipped):
        self.seen.append(result.path)
        if len(self.seen) == self.n:
            raise KeyboardInterrupt


def test_ctrl_c_writes_what_was_scored_and_says_so(slides, ensemble, tmp_path):
    out = tmp_path / "results.xlsx"
    summary = run_batch([slides], out, ensemble, batch_size=2, observer=_CtrlCAfter(4))
    assert summary.interrupted and summary.exit_code == 130
    rows = load_workbook(out)["Results"].max_row - 1
    assert 4 <= rows < 8
    assert run_batch([slides], out, ensemble).counts.skipped == rows


def test_kill_9_midway_then_rerun_finishes_the_job(models_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "many"
    for i in range(60):
        write_image(folder / f"f{i:02d}.png", seed=i)
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "allscan", "predict", str(folder), "-o", str(out), "--models", str(models_dir),
           "--batch-size", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    store = store_path_for(out)
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists():
            import sqlite3

            try:
                stored = sqlite3.connect(store).execute("SELECT COUNT(*) FROM files").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 5:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 5 <= stored < 60, "the run should be killed midway"
    assert not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = _csv_rows(out)
    assert sorted(r["file"] for r in rows) == [f"f{i:02d}.png" for i in range(60)]
    assert all(r["verdict"] in ("ALL", "normal") for r in rows)


def test_sigterm_midway_writes_what_was_scored_as_ctrl_c_does(models_dir, tmp_path):
    """A service manager's stop (SIGTERM) killed predict with nothing written and no message (exit 143)."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    folder = tmp_path / "many"
    for i in range(60):
        write_image(folder / f"f{i:02d}.png", seed=i)
    out = tmp_path / "results.csv"
    proc = subprocess.Popen([sys.executable, "-m", "allscan", "predict", str(folder), "-o", str(out), "--models",
                             str(models_dir), "--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    store, stored, deadline = store_path_for(out), 0, time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and stored < 5:
        try:
            stored = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True).execute("SELECT COUNT(*) FROM files"
                                                                                   ).fetchone()[0]
        except sqlite3.Error:
            stored = 0
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: results so far were written" in err
    assert 5 <= len(_csv_rows(out)) < 60
