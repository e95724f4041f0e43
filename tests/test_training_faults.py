"""What train, tune and evaluate do with faulty data, options and outputs: one line and exit 2 before the work,
never an internal error; undefined figures shown as undefined."""

import json
import warnings
from dataclasses import asdict

import pytest
from typer.testing import CliRunner

from allscan.cli import app
from allscan.training.dataset import DatasetError, load_images
from allscan.training.metrics import compute_metrics
from tests.utils import cli_process, labelled_fields, write_dataset

runner = CliRunner()


def _data(root, train=None, val=None):
    labelled_fields(root / "train", train or {"normal": 4, "ALL": 4})
    labelled_fields(root / "val", val or {"normal": 3, "ALL": 3}, seed=50)
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])
    return path


def _run_folder(run, input_size=32, epochs_done=2):
    """A run folder as a cut run leaves it (its checkpoint a stand-in: nothing below loads it)."""
    from allscan.training.train import TrainConfig

    run.mkdir(parents=True)
    config = TrainConfig(epochs=5, batch_size=4, input_size=input_size, learning_rate=0.001, blank_box=None)
    (run / "config.json").write_text(json.dumps({**asdict(config), "model": "alexnet", "weights": "None"}))
    (run / "state.json").write_text(json.dumps({"epochs_done": epochs_done, "best_val_loss": 0.5}))
    (run / "last.keras").write_bytes(b"checkpoint")
    return run


def _train(data, tmp_path, *extra):
    return ["train", data, "--model", "alexnet", "--out", tmp_path / "models", "--runs-dir", tmp_path / "runs", *extra]


# 4: class folders are checked before anything loads


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_refuses_a_split_without_both_classes_before_tensorflow_loads(split, tmp_path):
    data = _data(tmp_path / "data", **{split: {"Normal": 4, "ALL": 4}})
    code, lines, _, tensorflow = cli_process(*_train(data, tmp_path, "--epochs", "1"))
    assert code == 2 and not tensorflow
    assert lines == [(f"error: {data / split} needs images in both normal/ and ALL/; none in normal/ (found ALL/,"
                      " Normal/)")]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


def test_tune_refuses_a_one_class_val_split_before_the_models_load(tmp_path, models_dir):
    data = labelled_fields(tmp_path / "data" / "val", {"ALL": 3}).parent
    code, lines, _, tensorflow = cli_process("tune", data, "--models", models_dir)
    assert code == 2 and not tensorflow
    assert len(lines) == 1 and "none in normal/ (found ALL/)" in lines[0]


def test_evaluate_names_the_folders_it_found_when_no_class_folder_holds_images(tmp_path, models_dir):
    data = labelled_fields(tmp_path / "data" / "test", {"Normal": 2, "all": 2}).parent
    code, lines, _, tensorflow = cli_process("evaluate", data, "--models", models_dir)
    assert code == 2 and not tensorflow
    assert lines == [f"error: no images in {data / 'test'}/normal/ or {data / 'test'}/ALL/ (found Normal/, all/)"]


# 3: an unreadable image is named, and nothing trains


def test_a_corrupt_training_image_is_named_before_any_epoch(tmp_path):
    data = _data(tmp_path / "data")
    broken = _truncate(data / "train" / "ALL" / "ALL-2.png")
    result = runner.invoke(app, [str(a) for a in _train(data, tmp_path, "--epochs", "1", "--input-size", "32",
                                                         "--batch-size", "4")])
    assert result.exit_code == 2
    assert f"cannot read {broken} (corrupt or truncated image" in result.output and "bug" not in result.output
    assert not (tmp_path / "runs" / "alexnet").exists() and not (tmp_path / "models").exists()


def test_evaluate_and_tune_name_a_corrupt_image(tmp_path, models_copy):
    data = _data(tmp_path / "data")
    labelled_fields(data / "test", {"normal": 2, "ALL": 2})
    for command, split in (("evaluate", "test"), ("tune", "val"), ("fit-domain", "train")):
        broken = _truncate(data / split / "normal" / "normal-1.png")
        result = runner.invoke(app, [command, str(data), "--models", str(models_copy)])
        assert result.exit_code == 2, command
        assert f"cannot read {broken} (corrupt or truncated image" in result.output and "bug" not in result.output


def test_every_unreadable_image_is_counted(tmp_path):
    folder = labelled_fields(tmp_path / "ALL", {"x": 6})
    paths = sorted(folder.rglob("*.png"))
    for path in paths[:5]:
        _truncate(path)
    with pytest.raises(DatasetError, match=rf"cannot read {paths[0]} \(.*\); also {paths[1]}, {paths[2]} and 2 more"):
        load_images(paths, 32, None)


# 5: figures without a denominator are undefined


def test_figures_without_a_denominator_are_undefined_and_written_as_null():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_all = compute_metrics([1, 1, 1], [0.9, 0.2, 0.7], intervals=True, resamples=50).to_dict()
        only_normal = compute_metrics([0, 0, 0], [0.1, 0.2, 0.3], intervals=True, resamples=50).to_dict()
    assert only_all["specificity"] is only_all["balanced_accuracy"] is only_all["roc_auc"] is None
    assert only_all["recall"] == pytest.approx(2 / 3) and only_all["intervals"]["roc_auc"] == [None, None]
    for name in ("precision", "recall", "f1", "balanced_accuracy", "roc_auc"):
        assert only_normal[name] is None, name
    assert only_normal["specificity"] == 1.0 and only_normal["accuracy"] == 1.0
    json.dumps([only_all, only_normal], allow_nan=False)


def test_evaluate_on_one_class_warns_once_and_writes_strict_json(tmp_path, models_dir):
    data = write_dataset(tmp_path / "data" / "test", counts={"ALL": 3}).parent
    out, plots = tmp_path / "metrics.json", tmp_path / "plots"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["evaluate", str(data), "--models", str(models_dir), "--out", str(out),
                                     "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught] == []
    assert result.stderr.splitlines() == [(f"warning: {data / 'test'} holds only ALL images (found ALL/): the"
                                           " figures that need both classes are shown as – and written as null")]
    assert "–" in result.stdout and "nan" not in result.stdout.lower()

    def refuse(constant):
        raise ValueError(constant)

    figures = json.loads(out.read_text(), parse_constant=refuse)
    ensemble = figures["ensemble"]
    assert ensemble["specificity"] is ensemble["balanced_accuracy"] is ensemble["roc_auc"] is None
    assert ensemble["n"] == 3 and ensemble["accuracy"] is not None
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        ["reliability.png", "confusion_ensemble.png", *(f"confusion_{n}.png" for n in figures["models"])])


# 10: training options are checked


@pytest.mark.parametrize("option, value, reason", [
    ("--epochs", "0", "--epochs"), ("--input-size", "0", "--input-size"), ("--lr", "-1", "--lr must be above 0"),
    ("--lr", "0", "--lr must be above 0"),
])
def test_training_options_out_of_range_are_refused_before_tensorflow_loads(option, value, reason, tmp_path):
    data = _data(tmp_path / "data")
    code, lines, _, tensorflow = cli_process(*_train(data, tmp_path, option, value))
    assert code == 2 and not tensorflow
    assert reason in "\n".join(lines) and "bug" not in "\n".join(lines)


def test_a_batch_larger_than_the_training_set_is_refused_before_the_data_loads(tmp_path):
    data = _data(tmp_path / "data")
    result = runner.invoke(app, [str(a) for a in _train(data, tmp_path, "--batch-size", "100")])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (f"error: --batch-size 100 is larger than the training set (8 images in"
                                               f" {data / 'train'})")
    assert not (tmp_path / "runs").exists()


# 6: resuming keeps the run's settings; a run folder is never replaced unasked


def test_resume_refuses_other_settings_and_leaves_the_run_as_it_was(tmp_path):
    data = _data(tmp_path / "data")
    run = _run_folder(tmp_path / "runs" / "alexnet")
    before = (run / "config.json").read_bytes()
    for extra, reason in (
            (("--input-size", "48", "--lr", "0.01"),
             (f"--resume: {run} was started with other settings: --input-size 48 (the run's: 32); --lr 0.01 (the"
              " run's: 0.001); give the run's (or leave them out), or --restart it")),
            (("--epochs", "1"), f"--resume: {run} has run 2 epochs already; give --epochs 2 or more")):
        result = runner.invoke(app, [str(a) for a in _train(data, tmp_path, "--resume", *extra)])
        assert result.exit_code == 2
        assert " ".join(result.output.split()) == f"error: {reason}"
        assert (run / "config.json").read_bytes() == before


def test_train_into_a_run_folder_needs_resume_or_restart(tmp_path):
    data = _data(tmp_path / "data")
    run = _run_folder(tmp_path / "runs" / "alexnet")
    for extra, reason in (
            ((), (f"{run} holds a run: give --resume to continue it, --restart to start it again (deleting its"
                  " checkpoints), or another --runs-dir")),
            (("--resume", "--restart"), "give --resume or --restart, not both"),
            (("--restart", "--batch-size", "100"), "--batch-size 100 is larger than the training set")):  # got past
        result = runner.invoke(app, [str(a) for a in _train(data, tmp_path, *extra)])
        assert result.exit_code == 2 and " ".join(result.output.split()).startswith(f"error: {reason}")
        assert (run / "last.keras").read_bytes() == b"checkpoint"


def test_resume_keeps_the_runs_settings(tmp_path):
    from allscan.models.registry import get_spec
    from allscan.training.dataset import load_split
    from allscan.training.train import RunSettingsError, TrainConfig, fit

    data = _data(tmp_path / "data")
    sets = [load_split(data / split, 32, None) for split in ("train", "val")]
    run = tmp_path / "runs" / "alexnet"
    fit(get_spec("alexnet"), *sets, run, TrainConfig(epochs=1, batch_size=4, input_size=32, learning_rate=0.001))
    before = (run / "config.json").read_bytes()
    with pytest.raises(RunSettingsError, match="other input_size"):
        fit(get_spec("alexnet"), *sets, run, TrainConfig(epochs=2, batch_size=4, input_size=48, learning_rate=0.001),
            resume=True)
    assert (run / "config.json").read_bytes() == before

    resumed = runner.invoke(app, [str(a) for a in _train(data, tmp_path, "--resume", "--epochs", "2",
                                                          "--blank-box", "none")])
    assert resumed.exit_code == 0, resumed.output
    said = " ".join(resumed.output.split())
    assert f"alexnet: resuming {run} after epoch 1, with the run's settings" in said
    assert "32px, 2 epochs, batch 4" in said and "epoch 2 loss" in said
    saved = json.loads((run / "config.json").read_text())
    assert (saved["input_size"], saved["batch_size"], saved["epochs"]) == (32, 4, 2)


# 12: evaluate's outputs are checked before the models load


def test_evaluate_checks_its_outputs_before_the_models_load(tmp_path, models_dir):
    data = labelled_fields(tmp_path / "data" / "test", {"normal": 2, "ALL": 2}).parent
    (tmp_path / "folder").mkdir()
    (tmp_path / "a file").write_text("x")
    theirs = tmp_path / "theirs"
    labelled_fields(theirs, {"x": 1})
    (theirs / "x" / "x-0.png").rename(theirs / "roc.png")
    original = (theirs / "roc.png").read_bytes()
    for option, path, reason in (
            ("--out", tmp_path / "folder", f"figures file {tmp_path / 'folder'} is a folder"),
            ("--plots", tmp_path / "a file", f"plots folder {tmp_path / 'a file'} is a file, not a folder"),
            ("--plots", theirs, f"the plot {theirs / 'roc.png'} exists and is not an allscan figure")):
        code, lines, _, tensorflow = cli_process("evaluate", data, "--models", models_dir, option, path)
        assert code == 2 and not tensorflow, option
        assert len(lines) == 1 and reason in lines[0]
    assert (theirs / "roc.png").read_bytes() == original
