"""Faults a lab's data scientist met making models: outputs of evaluate and of the shipping commands checked
before the work, and training checkpoints that a kill cannot leave half written."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from allscan.cli import app
from tests.utils import cli_process, labelled_fields, read_only, tiny_model

runner = CliRunner()


def _data(root):
    for split, seed in (("train", 0), ("val", 50), ("test", 90)):
        labelled_fields(root / split, {"normal": 4, "ALL": 4}, seed)
    return root


def _stand_in_run(run: Path, best: bytes) -> Path:
    """An AlexNet run folder of one epoch whose best epoch's file holds ``best``."""
    from allscan.training.train import EpochLog, TrainConfig

    run.mkdir(parents=True)
    config = TrainConfig(epochs=2, batch_size=4, input_size=24, learning_rate=1e-3, blank_box=None)
    (run / "config.json").write_text(json.dumps({**asdict(config), "model": "alexnet", "weights": "None"}))
    (run / "history.jsonl").write_text(json.dumps(asdict(EpochLog(1, 0.6, 0.6, 0.5, 0.5, 1.0))) + "\n")
    (run / "best.json").write_text(json.dumps({"epoch": 1, "val_loss": 0.6}))
    (run / "best.keras").write_bytes(best)
    return run


# evaluate --out replaced any file given there, a lab's own document included


def test_evaluate_refuses_to_replace_a_file_it_did_not_write_before_the_models_load(tmp_path, models_dir):
    data = labelled_fields(tmp_path / "data" / "test", {"normal": 2, "ALL": 2}).parent
    theirs = tmp_path / "patients.csv"
    theirs.write_text("patient,result\nA1,ALL\n")
    code, lines, _, tensorflow = cli_process("evaluate", data, "--models", models_dir, "--out", theirs)
    assert code == 2 and not tensorflow
    assert lines == [f"error: the figures file {theirs} exists and is not allscan's figures (it is not the JSON object"
                     " allscan evaluate writes); allscan replaces its figures file: give another --out, or move that"
                     " file away first"]
    assert theirs.read_text() == "patient,result\nA1,ALL\n"


@pytest.mark.parametrize("text, ours", [
    (json.dumps({"models": {}, "ensemble": {"n": 4}, "split": "test", "box": "blank", "models_digest": "ab"},
                indent=2), True),
    ("", True),  # an empty file may be replaced
    (json.dumps({"models": {}, "ensemble": {}}), False),
    (json.dumps([1, 2]), False),
    ('{"models": ', False),
])
def test_a_figures_file_is_recognised_by_its_keys(tmp_path, text, ours):
    from allscan.run.preflight import OWN_FIGURES, PreflightError, check_own_file

    path = tmp_path / "metrics.json"
    path.write_text(text)
    if ours:
        check_own_file(path, "figures file", "--out", OWN_FIGURES)
    else:
        with pytest.raises(PreflightError, match="is not allscan's figures"):
            check_own_file(path, "figures file", "--out", OWN_FIGURES)


# train, train-cells and ship found a bad --out only when shipping, after the training


def _bad_outs(tmp_path):
    """Each --out that shipping cannot write into, with the line that refuses it."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the lab's notes\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"models": {')
    locked = tmp_path / "locked"
    locked.mkdir()
    return [(a_file, f"error: models folder {a_file} is a file, not a folder"),
            (broken, f"error: malformed manifest {broken / 'manifest.json'}: Expecting property name"),
            (locked / "models", f"error: cannot write in the parent folder of --out {locked}:")], locked


def test_train_and_train_cells_refuse_a_bad_out_before_anything_trains(tmp_path):
    data = _data(tmp_path / "data")
    outs, locked = _bad_outs(tmp_path)
    with read_only(locked):
        for out, line in outs:
            for command in ("train", "train-cells"):
                code, lines, _, tensorflow = cli_process(command, data, "--out", out, "--runs-dir", tmp_path / "runs",
                                                         "--epochs", "1", "--batch-size", "4")
                assert code == 2 and (command == "train-cells" or not tensorflow), (command, out, lines)
                assert len(lines) == 1 and lines[0].startswith(line), (command, lines)
    assert not (tmp_path / "runs").exists() and (tmp_path / "notes.txt").read_text() == "the lab's notes\n"
    assert sorted(p.name for p in locked.iterdir()) == []


def test_ship_refuses_a_bad_out_before_the_run_loads(tmp_path):
    """The run's best epoch is a stand-in: the checks come first."""
    data = _data(tmp_path / "data")
    run = _stand_in_run(tmp_path / "runs" / "alexnet", b"not loaded before the checks")
    outs, locked = _bad_outs(tmp_path)
    with read_only(locked):
        for out, line in outs:
            code, lines, _, _ = cli_process("ship", run, data, "--out", out)
            assert code == 2, (out, lines)
            assert len(lines) == 1 and lines[0].startswith(line), lines


# a kill while a checkpoint was saved left half of it, and --resume then ended in an internal error


def test_a_checkpoint_cut_while_saving_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from allscan._tf import keras
    from allscan.training.train import _save_model

    path = tmp_path / "last.keras"
    first = tiny_model("alexnet", 24, seed=1)
    _save_model(first, path)
    second = tiny_model("alexnet", 24, seed=2)
    save = type(second).save

    def cut_while_saving(self, target, *args, **kwargs):
        save(self, target, *args, **kwargs)
        with open(target, "r+b") as handle:  # half of the file written...
            handle.truncate(handle.seek(0, 2) // 2)
        raise KeyboardInterrupt  # ...when the run was stopped

    monkeypatch.setattr(type(second), "save", cut_while_saving)
    with pytest.raises(KeyboardInterrupt):
        _save_model(second, path)
    loaded = keras.models.load_model(path)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), first.get_weights()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def test_resuming_from_a_damaged_checkpoint_is_one_line_naming_the_remedies(tmp_path):
    from allscan.training.train import TrainConfig

    data = _data(tmp_path / "data")
    run = tmp_path / "runs" / "alexnet"
    run.mkdir(parents=True)
    config = TrainConfig(epochs=2, batch_size=4, input_size=32, learning_rate=1e-3, blank_box=None)
    (run / "config.json").write_text(json.dumps({**asdict(config), "model": "alexnet", "weights": "None"}))
    (run / "state.json").write_text(json.dumps({"epochs_done": 1, "best_val_loss": 0.5}))
    (run / "last.keras").write_bytes(b"PK\x03\x04 half of a checkpoint")
    result = runner.invoke(app, ["train", str(data), "--model", "alexnet", "--out", str(tmp_path / "models"),
                                 "--runs-dir", str(tmp_path / "runs"), "--resume"])
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        f"error: cannot resume {run}: its last checkpoint {run / 'last.keras'} is damaged or incomplete; ship its best"
        " epoch so far with allscan ship, or --restart the run"]
    assert "internal error" not in result.output and not (tmp_path / "models").exists()


# --weights: a missing file ended with exit 3 after the data loaded, an unreadable one in a line not naming it, and
# --model all tried one architecture's weights on all four, after the first had trained


def test_weights_that_cannot_serve_are_refused_before_tensorflow_loads(tmp_path):
    data = _data(tmp_path / "data")
    (tmp_path / "folder").mkdir()
    weights = tmp_path / "resnet50_notop.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")
    for extra, line in (
            (("--model", "alexnet", "--weights", tmp_path / "nope.h5"),
             f"--weights {tmp_path / 'nope.h5'}: no such file"),
            (("--model", "alexnet", "--weights", tmp_path / "folder"),
             f"--weights {tmp_path / 'folder'}: a folder, not a file"),
            (("--weights", weights), "--weights starts one architecture's backbone: give --model NAME with it")):
        code, lines, _, tensorflow = cli_process("train", data, "--out", tmp_path / "models", "--runs-dir",
                                                 tmp_path / "runs", *extra)
        assert code == 2 and not tensorflow, lines
        assert lines == [f"error: {line}"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


def test_a_weights_file_that_does_not_load_is_named_in_one_line(tmp_path):
    data = _data(tmp_path / "data")
    weights = tmp_path / "alexnet.weights.h5"
    weights.write_text("not weights")
    result = runner.invoke(app, ["train", str(data), "--model", "alexnet", "--out", str(tmp_path / "models"),
                                 "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--batch-size", "4",
                                 "--input-size", "32", "--weights", str(weights)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot start alexnet from the weights file {weights}: ")
    assert not (tmp_path / "models").exists() and not list((tmp_path / "runs" / "alexnet").iterdir())


# an image copied into two splits, or into both classes, was scored and counted without a word


def _with_copies(root):
    """The tiny data with one training image copied into test/ and val/, and a test normal image into test/ALL/."""
    import shutil

    data = _data(root)
    shutil.copy(data / "train" / "ALL" / "ALL-1.png", data / "test" / "ALL" / "copied.png")
    shutil.copy(data / "train" / "normal" / "normal-2.png", data / "val" / "normal" / "copied.png")
    shutil.copy(data / "test" / "normal" / "normal-0.png", data / "test" / "ALL" / "relabelled.png")
    return data


def test_images_shared_between_splits_or_classes_are_warned_of_before_the_models_load(tmp_path, models_dir):
    """Each command is stopped by a usage error found after the warnings: a bad --box, --lr or models folder."""
    data = _with_copies(tmp_path / "data")
    test, train, val = data / "test", data / "train", data / "val"
    both = (f"warning: 1 image is in both normal/ and ALL/ of {test} (the same content, e.g."
            f" {test / 'ALL' / 'relabelled.png'} and {test / 'normal' / 'normal-0.png'}): each is counted as both"
            " classes")
    code, lines, _, tensorflow = cli_process("evaluate", data, "--models", models_dir, "--box", "nope")
    assert code == 2 and not tensorflow
    assert lines[:2] == [both, (
        f"warning: 1 image of {test} is also in {train} (the same content, e.g. {test / 'ALL' / 'copied.png'} and"
        f" {train / 'ALL' / 'ALL-1.png'}): test/ is not held out from train/ for them")]
    held_out = (f"warning: 1 image of {val} is also in {train} (the same content, e.g. {val / 'normal' / 'copied.png'}"
                f" and {train / 'normal' / 'normal-2.png'}): val/ is not held out from train/ for them")
    for command in (("train", data, "--lr", "0"), ("tune", data, "--models", tmp_path / "none")):
        code, lines, _, tensorflow = cli_process(*command)
        assert code == 2 and not tensorflow
        assert lines[0] == held_out, command


def test_same_content_reads_only_files_of_a_shared_size(tmp_path, monkeypatch):
    from pathlib import Path

    from allscan.training.dataset import same_content

    files = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    for name, text in (("a", "same"), ("b", "same"), ("c", "diff"), ("d", "longer")):
        files[name].write_text(text)
    read = []
    real = Path.read_bytes

    def counted(self):
        read.append(self.name)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    assert same_content([files["a"], files["d"]], [files["b"], files["c"]]) == [(files["a"], files["b"])]
    assert "d" not in read
    assert same_content([files["c"]], [files["b"], tmp_path / "gone"]) == []


def test_images_a_split_leaves_out_are_warned_of_before_tensorflow_loads(tmp_path):
    import shutil

    data = _data(tmp_path / "data")
    train = data / "train"
    (train / "all").mkdir()
    shutil.copy(train / "ALL" / "ALL-0.png", train / "all" / "second-batch.png")  # not ALL/: case-sensitive
    (train / "ALL" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (train / "ALL" / "notes.txt").write_text("not an image format: not counted")
    code, lines, _, tensorflow = cli_process("train", data, "--lr", "0")
    assert code == 2 and not tensorflow
    assert lines == [
        f"warning: 1 image of {train} is outside normal/ and ALL/ (e.g. {train / 'all' / 'second-batch.png'}; found"
        " ALL/, all/, normal/): left out; the class folder names are case-sensitive",
        f"warning: files in formats allscan does not read in {train} (.heic 1): left out",
        "error: --lr must be above 0, got 0"]


def test_a_learning_rate_that_is_not_a_number_is_refused_before_training(tmp_path):
    """`--lr nan` passed the check for "0 or less" and trained every weight to nan, for hours."""
    code, lines, _, tensorflow = cli_process("train", _data(tmp_path / "data"), "--lr", "nan")
    assert code == 2 and not tensorflow
    assert lines == ["error: --lr must be above 0, got nan"]


# evaluate's table, a column per figure, cut every number short on a terminal under some 190 characters


@pytest.mark.parametrize("width", [80, 120])
def test_the_figures_table_shows_every_figure_interval_and_count_whole(width):
    from rich.console import Console

    from allscan.cli.display import metrics_table
    from allscan.training.metrics import compute_metrics

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(72), np.ones(404)].astype(int)
    figures = compute_metrics(labels, np.clip(0.8 * labels + rng.normal(0, 0.2, 476), 0, 1), intervals=True,
                              resamples=50)
    console = Console(width=width, record=True)
    console.print(metrics_table("test split", {n: figures for n in ("resnet50", "efficientnet_b3", "alexnet",
                                                                     "vgg16", "ensemble")}))
    shown = console.export_text()
    assert "…" not in shown and max(map(len, shown.splitlines())) <= width
    d = figures.to_dict()
    (tn, fp), (fn, tp) = d["confusion_matrix"]
    for line, value in (("tn / fp", f"{tn} / {fp}"), ("fn / tp", f"{fn} / {tp}"), ("n", "476")):
        (row,) = [row for row in shown.splitlines() if row.startswith(f"{line} ")]
        assert [cell.strip() for cell in row.split("│")[1:]] == [value] * 5, line
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "brier", "ece"):
        low, high = d["intervals"][key]
        assert shown.count(f"{d[key]:.4f}") >= 5 and shown.count(f"{low:.3f}-{high:.3f}") == 5, key


# ship took a run of the cell classifier (cells/vgg16/mil) for the field model vgg16 and replaced that one with it


def test_ship_refuses_a_cell_classifier_run_and_leaves_the_models_folder_as_it_was(tmp_path, models_copy):
    import hashlib

    from allscan.models.registry import CELL_REGISTRY
    from allscan.training.train import EpochLog, TrainConfig

    data = _data(tmp_path / "data")
    run = tmp_path / "runs" / "cells" / "vgg16" / "mil"
    run.mkdir(parents=True)
    CELL_REGISTRY["vgg16"].build(64).save(run / "best.keras")
    config = TrainConfig(epochs=1, batch_size=4, input_size=64, learning_rate=3e-4, blank_box=None)
    (run / "config.json").write_text(json.dumps({**asdict(config), "model": "vgg16", "weights": "weak/best.keras"}))
    (run / "history.jsonl").write_text(json.dumps(asdict(EpochLog(1, 0.6, 0.6, 0.5, 0.5, 1.0))) + "\n")
    (run / "best.json").write_text(json.dumps({"epoch": 1, "val_loss": 0.6}))

    def snapshot():
        return {str(p.relative_to(models_copy)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(models_copy.rglob("*")) if p.is_file()}

    before = snapshot()
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(models_copy)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {run / 'best.keras'} is the cell classifier's vgg16, not the field"
                                          " model: a run of the cell classifier ships with allscan train-cells"
                                          " --resume"]
    assert snapshot() == before and sorted(p.name for p in models_copy.parent.iterdir()) == ["data", "models", "runs"]


# a run extended by --resume --epochs kept the schedule of the epochs first planned: its added epochs trained at the
# schedule's floor, 1% of the learning rate


def test_a_run_extended_by_more_epochs_trains_them_on_a_schedule_over_all_of_them(tmp_path):
    from allscan._tf import keras
    from allscan.models.registry import get_spec
    from allscan.training.dataset import load_split
    from allscan.training.train import TrainConfig, fit

    data = _data(tmp_path / "data")
    sets = [load_split(data / split, 32, None) for split in ("train", "val")]
    run = tmp_path / "runs" / "alexnet"
    first = TrainConfig(epochs=1, batch_size=4, input_size=32, learning_rate=0.001)
    fit(get_spec("alexnet"), *sets, run, first)
    fit(get_spec("alexnet"), *sets, run, TrainConfig(epochs=3, batch_size=4, input_size=32, learning_rate=0.001),
        resume=True)
    optimizer = keras.models.load_model(run / "last.keras").optimizer
    steps = 8 // 4
    assert int(optimizer.iterations.numpy()) == 3 * steps
    schedule = optimizer._learning_rate
    assert schedule.decay_steps + schedule.warmup_steps == 3 * steps
    assert float(schedule(steps)) > 0.5 * first.learning_rate  # the second epoch starts well above the floor


# train-cells replaced its runs unasked, resumed them with the registry's epochs instead of their own (a 1-epoch
# run grew to 10), and refused the second round when the runs folder was spelt otherwise


def _cell_runs(runs, weak_epochs=5, mil_epochs=2):
    """Stand-ins for a cut train-cells run: nothing below loads their checkpoints."""
    from allscan.training.train import TrainConfig

    for stage, epochs, weights in (("weak", weak_epochs, "None"), ("mil", mil_epochs, str(runs / "weak.keras"))):
        run = runs / "cells" / "vgg16" / stage
        run.mkdir(parents=True)
        config = TrainConfig(epochs=epochs, batch_size=4, input_size=64, learning_rate=3e-4, blank_box=None)
        (run / "config.json").write_text(json.dumps({**asdict(config), "model": "vgg16", "weights": weights}))
        (run / "state.json").write_text(json.dumps({"epochs_done": 1, "best_val_loss": 0.5}))
        (run / "last.keras").write_bytes(b"checkpoint")
    return runs


def test_train_cells_refuses_to_replace_its_runs_unasked(tmp_path):
    data = _data(tmp_path / "data")
    runs = _cell_runs(tmp_path / "runs")
    code, lines, _, _ = cli_process("train-cells", data, "--out", tmp_path / "models", "--runs-dir", runs)
    assert code == 2 and lines == [f"error: {runs / 'cells' / 'vgg16' / 'weak'} holds a run: give --resume to continue"
                                   " it, --restart to start it again (deleting its checkpoints), or another --runs-dir"]
    assert (runs / "cells" / "vgg16" / "weak" / "last.keras").read_bytes() == b"checkpoint"
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("extra, epochs, refine", [((), 5, 2), (("--epochs", "7", "--refine-epochs", "3"), 7, 3)])
def test_train_cells_resumes_with_the_runs_own_settings(tmp_path, monkeypatch, extra, epochs, refine):
    from allscan.models.registry import CELL_REGISTRY
    from allscan.training.dataset import DatasetError

    data = _data(tmp_path / "data")
    runs = _cell_runs(tmp_path / "runs")
    asked = {}

    def train_cell_classifier(data_dir, models_dir, runs_dir, names, config, refine_epochs, resume, report):
        asked.update(config=config(CELL_REGISTRY["vgg16"]), refine=refine_epochs, resume=resume)
        raise DatasetError("stopped before training")

    monkeypatch.setattr("allscan.training.cell_ship.train_cell_classifier", train_cell_classifier)
    result = runner.invoke(app, ["train-cells", str(data), "--out", str(tmp_path / "models"), "--runs-dir", str(runs),
                                 "--resume", *extra])
    assert result.exit_code == 2 and "stopped before training" in result.output
    assert (asked["config"].epochs, asked["config"].batch_size, asked["refine"], asked["resume"]) == (
        epochs, 4, refine, True)


def test_resuming_does_not_compare_the_weights_a_run_started_from():
    from pathlib import Path

    from allscan.training.train import RunSettingsError, TrainConfig, _check_resumable

    saved = TrainConfig(epochs=2, batch_size=4, input_size=64, learning_rate=3e-4, weights=Path("runs/weak/best.keras"))
    moved = TrainConfig(epochs=2, batch_size=4, input_size=64, learning_rate=3e-4,
                        weights=Path("/home/lab/runs/weak/best.keras"))
    _check_resumable(Path("runs/mil"), saved, 1, moved)
    with pytest.raises(RunSettingsError, match="other batch_size"):
        _check_resumable(Path("runs/mil"), saved, 1, TrainConfig(epochs=2, batch_size=8, input_size=64,
                                                                 learning_rate=3e-4))


def test_ship_names_a_damaged_best_epoch_in_one_line(tmp_path):
    data = _data(tmp_path / "data")
    run = _stand_in_run(tmp_path / "runs" / "alexnet", b"PK\x03\x04 a third of a checkpoint")
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(tmp_path / "models")])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: the run's best epoch {run / 'best.keras'} is damaged or incomplete"]
    assert not (tmp_path / "models").exists()
