"""Shipping is all or nothing: a ship, train or train-cells that fails or is interrupted at any step leaves
the models folder exactly as it was, with nothing left beside it."""

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from allscan.cli import app
from allscan.fileio import NEW_FOLDER, OLD_FOLDER, replace_folder
from allscan.models.manifest import load_manifest, sha256_file
from allscan.models.registry import CELL_REGISTRY, get_spec
from allscan.training.cell_data import load_cell_bags
from allscan.training.cell_train import train_member
from allscan.training.ship import ship
from allscan.training.train import EpochLog, TrainConfig, load_run
from tests.utils import smear, tiny_cell_spec, tiny_model, write_dataset

runner = CliRunner()
INTERRUPT_IN_CONVERTER = ("Check 'false' failed at src/frontends/common/src/frontend.cpp:53:\nConverting input model\n"
                          "KeyboardInterrupt: <EMPTY MESSAGE>")


def _fields(root: Path, val_labels: tuple[str, ...] = ("normal", "ALL")) -> Path:
    """Six 64-px fields per class and split; ``val/`` holds only ``val_labels``."""
    for split in ("train", "val", "test"):
        for label, tint in (("normal", (230, 190, 200)), ("ALL", (70, 30, 120))):
            if split == "val" and label not in val_labels:
                continue
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(smear(100 * len(split) + 10 * len(label) + i, 64, tint)).save(folder / f"{i}.png")
    return root


def _run(folder: Path, seed: int) -> Path:
    """A training run folder as `allscan train` leaves it, its best epoch a tiny untrained AlexNet."""
    folder.mkdir(parents=True)
    tiny_model("alexnet", 24, seed).save(folder / "best.keras")
    config = TrainConfig(epochs=2, batch_size=4, input_size=24, learning_rate=1e-3, blank_box=None)
    (folder / "config.json").write_text(json.dumps({**asdict(config), "model": "alexnet", "weights": "None"}))
    (folder / "history.jsonl").write_text(json.dumps(asdict(EpochLog(1, 0.6, 0.6, 0.5, 0.5, 1.0))) + "\n")
    (folder / "best.json").write_text(json.dumps({"epoch": 1, "val_loss": 0.6}))
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A data folder, a second run to ship, and a models folder that a complete ship produced."""
    root = tmp_path_factory.mktemp("ship-faults")
    data = _fields(root / "data")
    models = root / "models"
    result = runner.invoke(app, ["ship", str(_run(root / "runs" / "first", seed=3)), str(data), "--out", str(models)])
    assert result.exit_code == 0, result.output
    (models / "notes.txt").write_text("the lab's own notes stay\n")
    return data, _run(root / "runs" / "second", seed=4), models


@pytest.fixture()
def models(shipped, tmp_path):
    return Path(shutil.copytree(shipped[2], tmp_path / "lab" / "models", symlinks=True))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with its content's digest."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _leftovers(folder: Path) -> list[str]:
    """What lies beside ``folder`` under a name made from its own (a temporary or an old copy)."""
    return [p.name for p in folder.parent.glob(f"{folder.name}.*")]


def _predicts(data: Path, models: Path, out: Path) -> bool:
    result = runner.invoke(app, ["predict", str(data / "test"), "-o", str(out), "--models", str(models), "-q"])
    return result.exit_code == 0


def test_a_ship_that_fails_at_calibration_leaves_every_file_of_the_models_folder_as_it_was(shipped, models, tmp_path):
    data, run, _ = shipped
    before = _snapshot(models)
    one_class = _fields(tmp_path / "one-class", val_labels=("ALL",))
    result, config = load_run(run)
    with pytest.raises(ValueError, match="Platt"):  # the command refuses such a split; a library call gets here
        ship(get_spec("alexnet"), result, config, one_class, models)
    assert _snapshot(models) == before and _leftovers(models) == []
    assert _predicts(data, models, tmp_path / "p.csv")


def test_a_successful_ship_swaps_in_a_complete_folder_that_predict_accepts(shipped, models, tmp_path):
    data, run, first = shipped
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(models)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(models)
    entry = manifest.models["alexnet"]
    assert entry.sha256 == sha256_file(models / "alexnet.keras") != sha256_file(first / "alexnet.keras")
    assert entry.openvino is not None and entry.openvino.source_sha256 == entry.sha256
    assert manifest.domain and manifest.ensemble.tuned_on.startswith("val split")
    assert (models / "notes.txt").read_text() == "the lab's own notes stay\n"
    assert _leftovers(models) == []
    assert _predicts(data, models, tmp_path / "p.csv")


@pytest.mark.parametrize("step", ["convert_models", "refit_domain", "refit"])
def test_an_interrupt_at_any_shipping_step_exits_130_and_leaves_the_models_folder_as_it_was(
        shipped, models, monkeypatch, step):
    data, run, _ = shipped
    before = _snapshot(models)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"allscan.training.ship.{step}", interrupted)
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(models)])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert _snapshot(models) == before and _leftovers(models) == []


@pytest.mark.parametrize("command, step", [("tune", "allscan.training.ship.refit"),
                                           ("fit-domain", "allscan.training.fit_domain.refit_domain")])
def test_tune_or_fit_domain_cut_short_after_writing_leaves_the_models_folder_as_it_was(
        shipped, models, monkeypatch, command, step):
    """tune and fit-domain wrote the models folder in place: cut short after a write, they left it half refitted."""
    other = Path(shutil.copytree(shipped[0], models.parent / "other"))
    for split in ("train", "val"):  # other images than the folder was fitted on, so that a refit writes anew
        for i in range(3):
            shutil.copy(other / "test" / "ALL" / f"{i}.png", other / split / "normal" / f"{i}.png")
    before = _snapshot(models)
    module, name = step.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)

    def written_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)  # every file of the step written...
        raise KeyboardInterrupt  # ...and then Ctrl-C

    monkeypatch.setattr(step, written_then_interrupted)
    result = runner.invoke(app, [command, str(other), "--models", str(models)])
    assert result.exit_code == 130, result.output
    assert _snapshot(models) == before and _leftovers(models) == []


@pytest.mark.parametrize("wrapper", ["RuntimeError", "OpConversionFailure"])
def test_a_ctrl_c_that_the_openvino_converter_wraps_still_exits_130(shipped, models, monkeypatch, wrapper):
    import openvino
    from openvino.frontend import OpConversionFailure

    data, run, _ = shipped
    before = _snapshot(models)
    error = {"RuntimeError": RuntimeError, "OpConversionFailure": OpConversionFailure}[wrapper]

    def converter_cut_by_ctrl_c(*args, **kwargs):
        raise error(INTERRUPT_IN_CONVERTER)

    monkeypatch.setattr(openvino, "convert_model", converter_cut_by_ctrl_c)
    result = runner.invoke(app, ["ship", str(run), str(data), "--out", str(models)])
    assert result.exit_code == 130 and "interrupted" in result.output and "internal error" not in result.output
    assert _snapshot(models) == before and _leftovers(models) == []


def test_a_cell_classifier_ship_that_fails_at_calibration_leaves_the_models_folder_as_it_was(
        models_copy, tmp_path, monkeypatch):
    from allscan.training.cell_ship import ship_cells

    data = tmp_path / "fields"
    write_dataset(data / "train", counts={"normal": 4, "ALL": 4}, seed=0)
    write_dataset(data / "val", counts={"normal": 4, "ALL": 4}, seed=50)
    write_dataset(data / "one-class", counts={"ALL": 4}, seed=70)
    train, val = load_cell_bags(data / "train", None, 16.0), load_cell_bags(data / "val", None, 16.0)
    members = {}
    for name in CELL_REGISTRY:
        spec = tiny_cell_spec(name)
        monkeypatch.setitem(CELL_REGISTRY, name, spec)
        config = TrainConfig(epochs=1, batch_size=4, input_size=64, learning_rate=1e-2)
        members[name] = (train_member(spec, train, val, tmp_path / "runs" / name, config, refine_epochs=1), config)
    before = _snapshot(models_copy)
    with pytest.raises(ValueError, match="Platt"):
        ship_cells(members, train, load_cell_bags(data / "one-class", None, 16.0), models_copy, "fields", convert=False)
    assert _snapshot(models_copy) == before and _leftovers(models_copy) == []


def _folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_a_ship_killed_between_its_two_renames_is_recovered_by_the_next_one(tmp_path):
    models = tmp_path / "models"
    _folder(tmp_path / f"models{OLD_FOLDER}k1ll3d", {"manifest.json": "old", "cells/manifest.json": "old cells"})
    _folder(tmp_path / f"models{NEW_FOLDER}h4lf", {"manifest.json": "half"})

    def build(folder: Path) -> str:
        assert (folder / "manifest.json").read_text() == "old"  # the whole old folder, not the half-built one
        (folder / "manifest.json").write_text("new")
        return "built"

    assert replace_folder(models, build) == "built"
    assert _snapshot(models) == _snapshot(_folder(tmp_path / "expected", {"manifest.json": "new",
                                                                          "cells/manifest.json": "old cells"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected", "models"]


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    from allscan import fileio

    models = _folder(tmp_path / "models", {"manifest.json": "old", "cells/manifest.json": "old cells"})
    before = _snapshot(models)
    rename = fileio._rename

    def cut_before_the_new_one_goes_in(source: Path, target: Path) -> None:
        if target == models and NEW_FOLDER in source.name and OLD_FOLDER not in source.name:
            raise KeyboardInterrupt
        rename(source, target)

    monkeypatch.setattr(fileio, "_rename", cut_before_the_new_one_goes_in)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(models, lambda folder: (folder / "manifest.json").write_text("new"))
    assert _snapshot(models) == before and _leftovers(models) == []


def test_a_new_models_folder_gets_the_usual_permissions(tmp_path):
    replace_folder(tmp_path / "new" / "models", lambda folder: (folder / "manifest.json").write_text("{}"))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "new" / "models").stat().st_mode & 0o777 == 0o777 & ~mask
