"""The Ray engine on a local runtime: the same rows as the local engine, resume, clear errors."""

import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import allscan
from allscan.scoring.pipeline import Pipeline, as_pipeline
from allscan.cli import app
from allscan.run.engines import EngineError
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.run.batch import run_batch
from allscan.results.store import ResultStore, store_path_for
from tests.utils import CtrlCAfter, write_image

runner = CliRunner()


@pytest.fixture()
def slides(tmp_path):
    folder = tmp_path / "slides"
    for i in range(9):
        write_image(folder / f"field{i}.png", seed=i)
    write_image(folder / "day2" / "field0.jpg", seed=20, fmt="JPEG")
    (folder / "day2" / "broken.png").write_bytes(b"\x89PNG broken")
    (folder / "copy-of-field3.png").write_bytes((folder / "field3.png").read_bytes())
    return folder


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    probabilities = [c for c in a.columns if c.startswith("p_all")]
    pd.testing.assert_frame_equal(a.drop(columns=probabilities), b.drop(columns=probabilities))
    pd.testing.assert_frame_equal(a[probabilities], b[probabilities], atol=1e-4, check_exact=False)


def test_ray_engine_gives_the_rows_of_the_local_engine(ray_runtime, slides, ensemble, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative heatmap folders: Ray workers run elsewhere
    run_batch([slides], Path("local.csv"), ensemble, heatmaps=HeatmapOptions(Path("heat-local"), every=True))
    result = runner.invoke(app, ["predict", str(slides), "-o", "ray.csv", "--models", str(ensemble.models_dir),
                                 "--engine", "ray", "--batch-size", "3", "--quiet", "--heatmaps", "heat-ray",
                                 "--heatmaps-all"])
    assert result.exit_code == 1, result.output  # one broken image
    assert result.output == ""
    local, ray = allscan.read_results("local.csv.allscan.sqlite"), allscan.read_results("ray.csv.allscan.sqlite")
    _same_rows(ray.drop(columns="heatmap"), local.drop(columns="heatmap"))
    assert set(local["duplicate_of"]) == {"", str(slides / "copy-of-field3.png")}
    figures = [Path(f) for f in ray["heatmap"] if f]
    assert len(figures) == (local["heatmap"] != "").sum() == 11
    assert all(f.parent == tmp_path / "heat-ray" and f.is_file() for f in figures)


def test_ray_engine_resumes_after_an_interrupted_run(ray_runtime, slides, models_dir, ensemble, tmp_path):
    from allscan.run.engines.ray import RayEngine

    out = tmp_path / "r.csv"
    first = run_batch([slides], out, ensemble, batch_size=2, observer=CtrlCAfter(3), engine=RayEngine())
    assert first.interrupted
    with ResultStore(store_path_for(out), as_pipeline(ensemble).digest) as store:
        stored = [r for r in store.results() if r.score is not None]
    assert 3 <= len(stored) < 11
    driver = Pipeline.load(models_dir, load_models=False)  # as the CLI's driver: the actors score
    second = run_batch([slides], out, driver, batch_size=2, engine=RayEngine())
    assert not second.interrupted and second.counts.done == 12
    assert not any(m.loaded for m in driver.ensemble.members)
    assert second.counts.skipped == len(stored)
    with ResultStore(store_path_for(out), as_pipeline(ensemble).digest) as store:
        paths = [str(r.path) for r in store.results()]
    assert len(paths) == len(set(paths)) == 12
    local = allscan.predict([slides], models=models_dir, out=tmp_path / "local.csv")
    _same_rows(allscan.read_results(out), allscan.read_results(tmp_path / "local.csv"))
    assert len(local) == 12


def test_a_pool_that_leaves_no_cpu_for_decoding_is_refused(ray_runtime, slides, ensemble, tmp_path):
    from allscan.run.engines.ray import RayEngine

    with pytest.raises(EngineError, match="lower --actors or --actor-cpus"):
        run_batch([slides], tmp_path / "r.csv", ensemble, engine=RayEngine(actors=2))


def test_missing_ray_extra_is_one_clear_line(monkeypatch, slides, models_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = runner.invoke(app, ["predict", str(slides), "-o", str(tmp_path / "r.csv"), "--models", str(models_dir),
                                 "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output.strip() == 'error: the ray engine needs Ray: pip install "allscan[ray]"'
    assert not (tmp_path / "r.csv").exists()
