"""The OpenVINO runtime beside Keras: conversion parity, the int8 and bfloat16 rule, runtime choice, and
refusing OpenVINO files that are missing, altered or made from another model."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from allscan.models.ensemble import Ensemble
from allscan.models.manifest import ManifestError, load_manifest
from allscan.training.convert import PrecisionCheck, acceptable, precision_check
from tests.utils import TINY_SIZES, tiny_model


@pytest.fixture(scope="module")
def ov_models_dir(models_dir, domain_data, tmp_path_factory):
    """The tiny models converted (and quantised where the rule allows) as shipping does."""
    from allscan.training.convert import convert_models

    target = tmp_path_factory.mktemp("ov-models")
    shutil.copytree(models_dir, target, dirs_exist_ok=True)
    assert sorted(convert_models(target, domain_data)) == sorted(TINY_SIZES)
    return target


@pytest.fixture()
def ov_copy(ov_models_dir, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(ov_models_dir, target)
    return target


def _batches(sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8) for s in sizes}


@pytest.mark.parametrize("name", ["resnet50", "alexnet"])
def test_float32_openvino_reproduces_keras(name):
    from allscan.models.registry import REGISTRY
    from allscan.models.runtime import KerasForward, OpenVINOForward, compile_openvino
    from allscan.training.convert import to_openvino

    size, spec = TINY_SIZES[name], REGISTRY[name]
    model = tiny_model(name, size, seed=3)
    keras_run = KerasForward(model, spec.preprocessing, size)
    ov_run = OpenVINOForward(compile_openvino(to_openvino(model, spec.preprocessing, size)), size)
    for n in (1, 7):  # the batch dimension is dynamic
        batch = _batches([size], n)[size]
        (p_k, f_k), (p_o, f_o) = keras_run.outputs(batch), ov_run.outputs(batch)
        assert p_o.shape == (n,) and f_o.shape == f_k.shape
        np.testing.assert_allclose(p_o, p_k, atol=1e-4)
        np.testing.assert_allclose(f_o, f_k, rtol=1e-4, atol=1e-4)


def test_precision_rule_on_known_figures():
    assert acceptable(0.995, 0.990, 0.989)
    assert not acceptable(0.994, 0.990, 0.990)  # too many verdicts change
    assert not acceptable(1.0, 0.990, 0.9885)  # AUC falls by more than 0.001
    labels = np.array([0, 0, 1, 1])
    check = precision_check("int8", labels, np.array([0.1, 0.4, 0.6, 0.9]), np.array([0.1, 0.6, 0.6, 0.9]))
    assert check == PrecisionCheck("int8", 4, 0.75, 1.0, 0.875, pytest.approx(0.2), False)
    assert check.record()["roc_auc_int8"] == 0.875
    same = precision_check("bf16", labels, np.array([0.1, 0.4, 0.6, 0.9]), np.array([0.12, 0.38, 0.61, 0.88]))
    assert same.accepted and same.verdict_agreement == 1.0 and "roc_auc_bf16" in same.record()


def test_shipping_records_the_files_tied_to_their_keras(ov_models_dir):
    manifest = load_manifest(ov_models_dir)
    for entry in manifest.models.values():
        converted = entry.openvino
        assert converted.source_sha256 == entry.sha256
        assert (ov_models_dir / converted.xml).is_file() and (ov_models_dir / converted.bin).is_file()
        bf16_accepted = converted.bf16_check.get("accepted", False)
        assert converted.precision == ("int8" if converted.int8_check["accepted"] else "bf16" if bf16_accepted
                                       else "fp32")
        assert {"verdict_agreement", "roc_auc_fp32", "roc_auc_int8"} <= set(converted.int8_check)
        assert not converted.bf16_check or {"verdict_agreement", "roc_auc_bf16"} <= set(converted.bf16_check)
    assert not list(ov_models_dir.glob(".convert-*"))


def test_auto_runs_openvino_where_listed_and_keras_otherwise(ov_models_dir, models_dir):
    auto = Ensemble.load(ov_models_dir)
    assert auto.runtime == "openvino" and all(m.runtime.startswith("openvino ") for m in auto.members)
    assert Ensemble.load(models_dir, load_models=False).runtime == "keras"
    forced = Ensemble.load(ov_models_dir, runtime="keras")
    assert forced.runtime == "keras" and all(m.runtime == "keras" for m in forced.members)
    assert forced.digest == forced.manifest.digest != auto.digest  # results of the two never mix
    batches = _batches(auto.input_sizes, 5)
    (p_ov, f_ov), (p_k, f_k) = auto.outputs(batches), forced.outputs(batches)
    for m in auto.members:
        assert p_ov[m.name].shape == (5,) and f_ov[m.name].shape == f_k[m.name].shape
        if m.precision == "fp32":
            np.testing.assert_allclose(p_ov[m.name], p_k[m.name], atol=1e-4)
    with pytest.raises(ManifestError, match="lists no OpenVINO files"):
        Ensemble.load(models_dir, load_models=False, runtime="openvino")
    with pytest.raises(ValueError, match="unknown runtime"):
        Ensemble.load(models_dir, load_models=False, runtime="onnx")


def test_gradcam_loads_keras_beside_openvino(ov_models_dir):
    ensemble = Ensemble.load(ov_models_dir)
    assert all(m._model is None for m in ensemble.members)
    maps = ensemble.gradcams(_batches(ensemble.input_sizes, 2))
    assert all(maps[m.name].shape[0] == 2 for m in ensemble.members)


def test_pipeline_and_job_carry_the_runtime(ov_models_dir):
    from allscan.run.job import Job
    from allscan.scoring.pipeline import Pipeline

    pipeline = Pipeline.load(ov_models_dir, load_models=False)
    forced = Pipeline.load(ov_models_dir, load_models=False, runtime="keras")
    assert pipeline.digest != forced.digest
    assert Job.of(pipeline).runtime == "openvino" and Job.of(forced).runtime == "keras"


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "alexnet.bin").unlink(), "OpenVINO file missing"),
    (lambda folder: (folder / "vgg16.xml").write_text("<net/>"), "does not match the manifest"),
])
def test_missing_or_altered_openvino_files_are_refused(ov_copy, damage, message):
    damage(ov_copy)
    with pytest.raises(ManifestError, match=message):
        Ensemble.load(ov_copy, load_models=False)
    assert Ensemble.load(ov_copy, load_models=False, runtime="keras").runtime == "keras"


def test_openvino_files_from_another_keras_are_refused(ov_copy):
    path = ov_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["resnet50"]["openvino"]["source_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="converted from another .keras file"):
        Ensemble.load(ov_copy, load_models=False, runtime="keras")


def test_a_refused_int8_falls_back_to_bfloat16_where_the_cpu_has_it(ov_copy, domain_data, monkeypatch):
    from allscan.models.runtime import bf16_supported
    from allscan.training import convert

    real = convert.precision_check

    def int8_refused_bf16_accepted(precision, *args):
        return replace(real(precision, *args), accepted=precision == "bf16")

    monkeypatch.setattr(convert, "precision_check", int8_refused_bf16_accepted)
    convert.convert_models(ov_copy, domain_data, ["alexnet"])
    converted = load_manifest(ov_copy).models["alexnet"].openvino
    assert converted.int8_check["accepted"] is False
    assert "FakeQuantize" not in (ov_copy / converted.xml).read_text()  # the float32 files ship
    if not bf16_supported():
        assert converted.precision == "fp32" and converted.bf16_check == {}
        return
    assert converted.precision == "bf16" and converted.bf16_check["fields"] == 16
    member = {m.name: m for m in Ensemble.load(ov_copy).members}["alexnet"]
    keras = {m.name: m for m in Ensemble.load(ov_copy, runtime="keras").members}["alexnet"]
    assert member.runtime == "openvino bf16"
    batch = _batches([member.input_size], 4)[member.input_size]
    np.testing.assert_allclose(member.outputs(batch)[0], keras.outputs(batch)[0], atol=0.05)


def test_a_bfloat16_member_runs_float32_on_a_cpu_without_bfloat16(ov_copy, monkeypatch):
    from allscan.models import runtime

    path = ov_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["resnet50"]["openvino"]["precision"] = "bf16"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(runtime, "bf16_supported", lambda: False)
    without = Ensemble.load(ov_copy, load_models=False)
    assert {m.name: m.runtime for m in without.members}["resnet50"] == "openvino fp32"
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    with_units = Ensemble.load(ov_copy, load_models=False)
    assert {m.name: m.runtime for m in with_units.members}["resnet50"] == "openvino bf16"
    assert with_units.digest != without.digest  # results of one precision are never taken for the other's


def test_refit_with_reconvert_converts_every_member_again(ov_copy, domain_data):
    from allscan.training.ship import refit

    path = ov_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["resnet50"]["openvino"]["int8_check"] = {}  # as if converted before the rule existed
    path.write_text(json.dumps(data))
    refit(Ensemble.load(ov_copy), domain_data)
    assert load_manifest(ov_copy).models["resnet50"].openvino.int8_check == {}  # converted members stay
    refit(Ensemble.load(ov_copy), domain_data, reconvert=True)
    manifest = load_manifest(ov_copy)
    assert all(entry.openvino.int8_check["fields"] == 16 for entry in manifest.models.values())


def test_an_openvino_run_never_loads_tensorflow(ov_copy, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from tests.utils import disc_smear

    shutil.rmtree(ov_copy / "cells")  # the tiny cell classifier has no OpenVINO files: it would run in Keras
    Image.fromarray(disc_smear(16, seed=4)).save(tmp_path / "field.png")
    code = ("import sys, allscan; frame = allscan.predict([sys.argv[1]], models=sys.argv[2]);"
            " print(len(frame), frame['error'].fillna('').eq('').all(), 'tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "field.png"), str(ov_copy)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "True", "False"]  # scored, and TensorFlow's ~3 s and ~0.6 GB never paid


def test_a_node_that_would_run_a_bf16_member_in_fp32_refuses_and_says_why(ov_copy, monkeypatch):
    from allscan.models import runtime
    from allscan.run.job import Job
    from allscan.scoring.pipeline import Pipeline

    shutil.rmtree(ov_copy / "cells")  # the tiny cell classifier has no OpenVINO files
    path = ov_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["models"]["resnet50"]["openvino"]["precision"] = "bf16"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)  # the driver's CPU
    job = Job.of(Pipeline.load(ov_copy, load_models=False))
    monkeypatch.setattr(runtime, "bf16_supported", lambda: False)  # a node's CPU
    with pytest.raises(ManifestError, match="resnet50 runs openvino fp32 here, openvino bf16 on the driver"):
        job.worker()
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    assert callable(job.worker())  # a node like the driver scores


def test_a_node_loads_the_cell_classifier_in_the_runtime_the_driver_did(ov_copy):
    from allscan.run.job import Job
    from allscan.scoring.pipeline import Pipeline

    driver = Pipeline.load(ov_copy, load_models=False)  # fields in OpenVINO, the tiny cells in Keras (no files)
    assert driver.ensemble.runtime == "openvino" and driver.cells.ensemble.runtime == "keras"
    assert callable(Job.of(driver).worker())


def test_a_ray_actor_for_openvino_models_never_loads_tensorflow_and_keeps_to_its_threads(ov_copy):
    import subprocess
    import sys

    shutil.rmtree(ov_copy / "cells")  # the tiny cell classifier has no OpenVINO files: it would run in Keras
    code = ("import sys; from pathlib import Path; from allscan.scoring.pipeline import Pipeline;"
            " from allscan.run.job import Job; from allscan.run.engines.ray import _ScoreBatch;"
            " from allscan.models.runtime import _core;"
            " job = Job.of(Pipeline.load(Path(sys.argv[1]), load_models=False)).for_workers();"
            " actor = _ScoreBatch(job, 1);"
            " print(job.runtime, 'tensorflow' in sys.modules, _core().get_property('CPU', 'INFERENCE_NUM_THREADS'))")
    run = subprocess.run([sys.executable, "-c", code, str(ov_copy)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["openvino", "False", "1"]  # 0.5 GB and seconds less per actor
