"""The cell classifier's training from field labels (weak labels, multiple-instance refinement),
its shipping (calibration, threshold, review rule) and its field-level figures."""

import json
from pathlib import Path

import numpy as np
import pytest

from allscan.models.registry import CELL_REGISTRY
from allscan.results.types import VERDICT_ALL, VERDICT_NORMAL, CellFindings, CellResult, Score
from allscan.scoring.cells import CellClassifier, CellRule
from allscan.training.cell_data import CellBags, load_cell_bags
from allscan.training.cell_evaluate import class_rates, field_figures
from allscan.training.cell_ship import BENIGN_RATE, cell_threshold, fit_rule, ship_cells
from allscan.training.cell_train import refined_labels, train_member
from allscan.training.train import TrainConfig
from tests.utils import tiny_cell_spec, write_dataset


def _bags(labels, cells_per_field):
    field = np.concatenate([np.full(n, i) for i, n in enumerate(cells_per_field)]).astype(np.int32)
    crops = np.zeros((len(field), 64, 64, 3), np.uint8)
    return CellBags(tuple(Path(f"f{i}.png") for i in range(len(labels))), np.array(labels), crops, field)


def test_round_two_keeps_every_benign_cell_and_the_top_half_of_each_all_field():
    bags = _bags([1, 0, 1], [4, 2, 1])
    p = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2])
    keep, labels = refined_labels(bags, p)
    assert keep.tolist() == [False, True, False, True, True, True, True]
    assert labels[keep].tolist() == [1, 1, 0, 0, 1]


def test_field_figures_count_blasts_per_field_and_false_blasts_per_benign_cell():
    labels = np.array([1, 1, 0, 0])
    field = np.array([0, 0, 1, 2, 2, 3])
    p = np.array([0.9, 0.1, 0.2, 0.6, 0.1, 0.3])
    figures = field_figures(p, field, labels, threshold=0.5)
    assert figures.all_fields_with_blast["count"] == 1 and figures.all_fields_with_blast["n"] == 2
    assert figures.benign_cells_called_blast["count"] == 1 and figures.benign_cells_called_blast["n"] == 3
    assert figures.benign_fields_with_blast["rate"] == pytest.approx(0.5)
    assert figures.top_p_auc == pytest.approx(0.5)  # field 1 (ALL, top 0.2) ranks below benign field 2 (0.6)
    low, high = figures.all_fields_with_blast["ci95"]
    assert low < 0.5 < high
    rates = class_rates(np.array([0.9, 0.1, 0.6]), np.array(["lymphocyte", "lymphocyte", "monocyte"]), 0.5)
    assert rates["lymphocyte"]["count"] == 1 and rates["monocyte"]["rate"] == 1.0 and rates["all"]["n"] == 3


def test_threshold_and_review_rule_hold_their_rates_on_the_benign_cells():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 1000)
    benign = np.arange(1000) < 800
    threshold = cell_threshold(p, benign, rate=0.05)
    assert (p[benign] >= threshold).mean() <= 0.05
    assert (p[benign] >= threshold - 0.01).mean() > 0.04
    labels = np.array([0] * 80 + [1] * 20)
    field = np.repeat(np.arange(100), 10)
    rule = fit_rule(np.where(labels[field] == 1, 0.99, p), field, labels, "test")
    confident = np.where(labels[field] == 1, 0.99, p) >= rule.confident
    flagged = np.bincount(field[confident], minlength=100)[:80] >= rule.min_blasts
    assert flagged.mean() <= 0.02


def _cells(*ps):
    return CellFindings(tuple(CellResult(i + 1, 1.0, 1.0, 0, 0, 2, 2, 4.0, p, {}) for i, p in enumerate(ps)), 0.5)


def test_a_normal_image_with_confident_blasts_is_flagged_and_an_all_image_is_not():
    rule = CellRule(min_blasts=2, confident=0.9)
    normal = Score(0.1, VERDICT_NORMAL, False, 0, {}, cells=_cells(0.95, 0.97, 0.2))
    assert "2 cells look like blasts" in rule.disagreement(normal)
    assert rule.disagreement(Score(0.1, VERDICT_NORMAL, False, 0, {}, cells=_cells(0.95, 0.5))) == ""
    assert rule.disagreement(Score(0.9, VERDICT_ALL, False, 4, {}, cells=_cells(0.95, 0.97))) == ""


def test_weak_label_training_then_shipping_gives_a_loadable_calibrated_cell_classifier(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "fields" / "train", counts={"normal": 4, "ALL": 4}, seed=0).parent
    write_dataset(data / "val", counts={"normal": 4, "ALL": 4}, seed=50)
    train = load_cell_bags(data / "train", None, 16.0)
    val = load_cell_bags(data / "val", None, 16.0)
    assert len(train.field) > len(train.paths)  # several cells per field were found
    assert np.bincount(train.field)[train.labels == 1].mean() > np.bincount(train.field)[train.labels == 0].mean()
    members = {}
    for name in CELL_REGISTRY:
        spec = tiny_cell_spec(name)
        monkeypatch.setitem(CELL_REGISTRY, name, spec)
        config = TrainConfig(epochs=1, batch_size=4, input_size=64, learning_rate=1e-2)
        result = train_member(spec, train, val, tmp_path / "runs" / name, config, refine_epochs=1)
        assert result.best_path == tmp_path / "runs" / name / "mil" / "best.keras" and result.best_path.is_file()
        members[name] = (result, config)
    manifest = ship_cells(members, train, val, tmp_path / "models", "synthetic fields", convert=False)
    classifier = CellClassifier.load(tmp_path / "models", runtime="keras")
    assert set(manifest.models) == set(CELL_REGISTRY)
    assert 0 < classifier.threshold < 1 and classifier.ensemble.manifest.ensemble.calibration.members
    assert classifier.rule.min_blasts >= 1 and "val split" in classifier.rule.fitted_on
    p, members_p, features = classifier.probabilities(val.crops)
    assert p.shape == (len(val.field),) and set(members_p) == set(features) == set(CELL_REGISTRY)
    assert (p[val.cell_labels == 0] >= classifier.threshold).mean() <= BENIGN_RATE  # fitted on these cells


def test_train_cells_command_trains_and_ships_a_converted_calibrated_cell_classifier(tmp_path, models_copy):
    from typer.testing import CliRunner

    from allscan.cli import app

    data = tmp_path / "data"
    for split, seed in (("train", 0), ("val", 50), ("test", 90)):
        write_dataset(data / split, counts={"normal": 4, "ALL": 4}, seed=seed)
    models = models_copy  # the tiny field models, whose tiny cell classifier train-cells replaces
    runner = CliRunner()
    result = runner.invoke(app, ["train-cells", str(data), "--out", str(models), "--runs-dir", str(tmp_path / "runs"),
                                 "--epochs", "1", "--refine-epochs", "1", "--batch-size", "4", "--blank-box", "none"])
    assert result.exit_code == 0, result.output
    assert "shipped the cell classifier" in result.output and "vgg16 weak epoch  1" in result.output
    manifest = CellClassifier.load(models).ensemble.manifest
    assert all(e.openvino is not None and e.training["epochs"] == 1 for e in manifest.models.values())
    assert all(e.training["round_one"]["epochs"] == 1 for e in manifest.models.values())
    assert manifest.ensemble.tuned_on.startswith("val split")
    assert all(e.architecture == CELL_REGISTRY[n].architecture for n, e in manifest.models.items())

    figures_out = tmp_path / "figures.json"
    result = runner.invoke(app, ["evaluate", str(data), "--split", "test", "--models", str(models), "--blank-box",
                                 "none", "--out", str(figures_out)])
    assert result.exit_code == 0, result.output
    assert "ALL fields with a cell called blast" in result.output
    cells = json.loads(figures_out.read_text())["cells"]
    assert cells["all_fields_with_blast"]["n"] == 4 and cells["threshold"] == manifest.ensemble.threshold

    path = models / "cells" / "manifest.json"
    edited = json.loads(path.read_text())
    edited["models"]["vgg16"]["openvino"]["int8_check"] = {}  # as if converted before the rule existed
    path.write_text(json.dumps(edited))
    result = runner.invoke(app, ["tune", str(data), "--models", str(models), "--reconvert"])
    assert result.exit_code == 0, result.output
    assert "shipped the cell classifier" in result.output and "threshold" in result.output
    reconverted = CellClassifier.load(models).ensemble.manifest.models["vgg16"].openvino
    assert reconverted.int8_check["fields"] == len(load_cell_bags(data / "val", None, 16.0).field)


def test_a_normal_image_whose_cells_look_like_blasts_goes_to_review_with_the_reason_first(tmp_path):
    from allscan.scoring.pipeline import Pipeline
    from tests.utils import disc_smear, make_models_dir

    models = make_models_dir(tmp_path / "models", threshold=0.999, band=(0.998, 0.999))  # every image normal
    (models / "cells" / "cell_rule.json").write_text(json.dumps({"min_blasts": 1, "confident": 1e-30}))
    pipeline = Pipeline.load(models)
    (score,) = pipeline.score([pipeline.fields(disc_smear(16, nuclei=3, seed=1))])
    assert score.verdict == VERDICT_NORMAL and score.cells.count >= 1
    assert score.review and score.domain.notes.startswith(f"cells disagree: {score.cells.count} cells look like")
