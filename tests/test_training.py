"""Training and evaluating end to end on a tiny generated dataset, the label box handling, shipping."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from allscan.cli import app
from allscan.training.dataset import blank_box, parse_box
from allscan.training.evaluate import swap_boxes
from allscan.models.manifest import load_manifest

runner = CliRunner()
BOX = (185, 203, 223, 222)


def _tiny_dataset(root, n=10):
    """Normal fields are pale pink, ALL fields carry dark purple blobs: learnable in two epochs."""
    for split in ("train", "val", "test"):
        for label, tint in (("normal", (230, 190, 200)), ("ALL", (70, 30, 120))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng(hash((split, label, i)) % 2**32)
                image = np.clip(rng.normal(220, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
                image[10:30, 10:30] = tint
                from PIL import Image

                Image.fromarray(image).save(folder / f"{i}.png")
    return root


def test_blank_box_blanks_exactly_the_box():
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    image[...] = (240, 230, 250)
    image[203:222, 185:223] = (200, 0, 0)  # red label text
    image[0:20, 0:20] = (10, 10, 10)  # a cell elsewhere must stay
    out = blank_box(image, BOX)
    assert (out[203:222, 185:223] == (240, 230, 250)).all()
    changed = np.any(out != image, axis=2)
    assert changed[203:222, 185:223].all() and changed.sum() == 19 * 38
    assert (out[0:20, 0:20] == 10).all()


def test_blank_box_scales_with_image_size():
    image = np.full((448, 448, 3), 250, dtype=np.uint8)
    image[406:444, 370:446] = 0
    assert (blank_box(image, BOX)[406:444, 370:446] == 250).all()


def test_parse_box():
    assert parse_box("185,203,223,222") == BOX
    assert parse_box("none") is None
    with pytest.raises(ValueError):
        parse_box("5,5,1,1")


def test_swap_boxes_pastes_other_class_label():
    normal = np.full((224, 224, 3), 200, dtype=np.uint8)
    normal[203:222, 185:223] = 0
    leukemic = np.full((224, 224, 3), 100, dtype=np.uint8)
    leukemic[203:222, 185:223] = 255
    out = swap_boxes([normal, leukemic], np.array([0, 1]), BOX)
    assert (out[0][203:222, 185:223] == 255).all() and (out[0][:200] == 200).all()
    assert (out[1][203:222, 185:223] == 0).all() and (out[1][:200] == 100).all()


def test_train_tune_evaluate_end_to_end(tmp_path):
    data = _tiny_dataset(tmp_path / "data")
    models = tmp_path / "models"
    runs = tmp_path / "runs"
    args = ["train", str(data), "--model", "alexnet", "--out", str(models), "--runs-dir", str(runs),
            "--epochs", "2", "--batch-size", "4", "--input-size", "32", "--lr", "0.003", "--blank-box", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    log = (runs / "alexnet" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch") and len(log) == 3
    manifest = load_manifest(models)
    entry = manifest.models["alexnet"]
    assert entry.input_size == 32 and entry.training["epochs"] == 2
    assert set(entry.validation) >= {"accuracy", "balanced_accuracy", "roc_auc"}
    assert manifest.domain and (models / manifest.domain["file"]).is_file()  # refitted by the shipping step

    resumed = runner.invoke(app, [*args[:-8], "--epochs", "3", "--batch-size", "4", "--input-size", "32",
                                  "--lr", "0.003", "--blank-box", "none", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len((runs / "alexnet" / "log.csv").read_text().splitlines()) == 4
    assert "epoch   3" in resumed.output

    shipped = tmp_path / "shipped"
    result = runner.invoke(app, ["ship", str(runs / "alexnet"), str(data), "--out", str(shipped)])
    assert result.exit_code == 0, result.output
    entry = load_manifest(shipped).models["alexnet"]
    best = json.loads((runs / "alexnet" / "best.json").read_text())["epoch"]
    assert entry.training["epochs"] == 3 and entry.training["best_epoch"] == best and entry.input_size == 32
    assert load_manifest(shipped).domain and load_manifest(shipped).ensemble.tuned_on.startswith("val split")

    assert runner.invoke(app, ["tune", str(data), "--models", str(models)]).exit_code == 0
    assert load_manifest(models).ensemble.tuned_on.startswith("val split")
    assert load_manifest(models).ensemble.calibration.method.startswith("Platt")

    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", str(data), "--split", "test", "--models", str(models),
                                 "--out", str(out), "--shortcut-check", "--blank-box", "20,20,32,32",
                                 "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert set(figures["models"]) == {"alexnet"}
    ens = figures["ensemble"]
    assert ens["n"] == 20 and sum(map(sum, ens["confusion_matrix"])) == 20
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "review"):
        assert key in ens
    assert ens["roc_auc"] > 0.9  # the tiny task is learnt in three epochs
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_alexnet.png", "confusion_ensemble.png", "precision_recall.png", "reliability.png", "roc.png"]
    assert ens["intervals"]["recall"][0] <= ens["recall"] <= ens["intervals"]["recall"][1]
    assert 0 <= ens["ece"] <= 1 and 0 <= ens["brier"] <= 1 and "ece" in ens["intervals"]
    assert set(load_manifest(models).ensemble.calibration.members) == {"alexnet"}
    check = figures["shortcut_check"]
    assert 0 <= check["flips_raw_to_swap"] <= 20 and check["raw"]["n"] == check["swap"]["n"] == 20
    assert check["heatmap_in_label_box"]["images"] == sum(figures["shortcut_check"]["raw"]["confusion_matrix"][i][1]
                                                           for i in (0, 1))


def test_ship_refuses_a_run_without_a_completed_epoch(tmp_path):
    data = _tiny_dataset(tmp_path / "data", n=2)
    run = tmp_path / "runs" / "alexnet"
    run.mkdir(parents=True)
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(tmp_path / "models")])
    assert result.exit_code == 2 and "no completed epoch" in result.output
    assert not (tmp_path / "models").exists()


def test_recalibration_replaces_stale_batchnorm_statistics():
    from allscan._tf import keras
    from allscan.training.train import batchnorm_layers, recalibrate_batchnorm

    inputs = keras.Input((8, 8, 3))
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.BatchNormalization(momentum=0.99)])
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inner(inputs)))
    layers = batchnorm_layers(model)
    assert len(layers) == 2  # nested backbones are reached
    rng = np.random.default_rng(0)
    batches = [(rng.normal(5.0, 2.0, (16, 8, 8, 3)).astype("float32"), None) for _ in range(20)]
    recalibrate_batchnorm(model, batches)
    first = layers[0] if layers[0] in inner.layers else layers[1]
    expected_mean = np.mean([b.mean(axis=(0, 1, 2)) for b, _ in batches], axis=0)
    assert np.allclose(first.moving_mean.numpy(), expected_mean, atol=1e-4)
    assert np.allclose(first.moving_variance.numpy(), 4.0, rtol=0.1)
    assert [layer.momentum for layer in layers] in ([0.99, 0.9], [0.9, 0.99])  # restored
