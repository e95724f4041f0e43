"""Grad-CAM on a model whose answer is known, and the heatmap figures written by predict and explain."""

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from allscan._tf import keras, tf
from allscan.cli import app
from allscan.models.gradcam import compiled_gradcam, ensemble_map
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.run.batch import run_batch
from tests.utils import write_image


class TopLeftOnly(keras.layers.Layer):
    """Zeroes the feature map outside the top-left quadrant: only that quadrant can move the logit."""

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        mask = np.zeros((1, h, w, 1), dtype="float32")
        mask[:, : h // 2, : w // 2] = 1.0
        return x * tf.constant(mask)


def _quadrant_model(size=32):
    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(1, 1, use_bias=False, name="conv")
    x = keras.layers.ReLU()(conv(inputs))
    x = TopLeftOnly(name="mask")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logit = keras.layers.Dense(1, name="all_logit")
    out = keras.layers.Activation("sigmoid")(logit(x))
    model = keras.Model(inputs, out)
    conv.set_weights([np.array([1.0, 0.0, -1.0], dtype="float32").reshape(1, 1, 3, 1)])  # red minus blue
    logit.set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    return model


def _image_with_red_blobs(size=32):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[4:10, 4:10] = (250, 0, 0)  # top-left: the quadrant the model reads
    image[22:28, 22:28] = (250, 0, 0)  # bottom-right: same colour, ignored by the model
    return image


def test_gradcam_peaks_where_the_model_looks():
    cam = compiled_gradcam(_quadrant_model(), "raw", 32)(tf.constant(_image_with_red_blobs()[None])).numpy()[0]
    assert cam.shape == (32, 32)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 4 <= peak[0] < 10 and 4 <= peak[1] < 10
    assert cam[22:28, 22:28].max() == 0.0
    assert cam.max() == 1.0


def test_ensemble_map_is_weighted_and_resized():
    a = np.zeros((4, 4), "float32")
    a[0, 0] = 1
    b = np.zeros((4, 4), "float32")
    b[3, 3] = 1
    combined = ensemble_map({"a": a, "b": b}, {"a": 0.9, "b": 0.1}, 40, 40)
    assert combined.shape == (40, 40)
    assert combined[:10, :10].max() == 1.0 and combined[30:, 30:].max() < 0.2


def test_gradcam_of_many_fields_runs_a_batch_at_a_time_with_the_same_maps(ensemble, monkeypatch):
    """A large image's hundreds of fields went through Grad-CAM in one call: gigabytes (4.2 GB for 256 fields)."""
    from allscan.models import ensemble as ensemble_module

    rng = np.random.default_rng(0)
    fields = {s: rng.integers(0, 255, (37, s, s, 3), dtype=np.uint8) for s in ensemble.input_sizes}
    whole = ensemble.gradcams(fields)
    seen = []
    for member in ensemble.members:
        compiled = member.gradcam
        member.gradcam = lambda batch, compiled=compiled: seen.append(len(batch)) or compiled(batch)
    monkeypatch.setattr(ensemble_module, "GRADCAM_BATCH", 8)
    try:
        chunked = ensemble.gradcams(fields)
    finally:
        for member in ensemble.members:
            member.gradcam = None
    assert max(seen) == 8 and sum(seen) == 37 * len(ensemble.members)
    for name in whole:
        assert chunked[name].shape == whole[name].shape and np.allclose(chunked[name], whole[name], atol=1e-5)


def test_predict_writes_heatmaps_and_fills_the_column(ensemble, tmp_path):
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", seed=i, size=64)
    folder = tmp_path / "in" / "heatmaps"  # inside the input folder: must not be scored as input
    out = tmp_path / "r.csv"
    summary = run_batch([tmp_path / "in"], out, ensemble, heatmaps=HeatmapOptions(folder, every=True))
    assert summary.counts.done == 3
    import csv

    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert all(r["heatmap"] for r in rows)
    figure = Image.open(rows[0]["heatmap"])
    # image + ensemble overlay + four models, side by side
    assert figure.width > 6 * 64 and figure.height > 64
    run_batch([tmp_path / "in"], out, ensemble, heatmaps=HeatmapOptions(folder, every=True), rescore=True)
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == 3


def test_a_rerun_keeps_the_heatmaps_and_draws_those_it_lacks(ensemble, tmp_path):
    """Rerunning the same command (as after Ctrl-C) emptied the heatmap column of every image already scored;
    a rerun that added --heatmaps drew nothing."""
    import csv

    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", seed=i, size=64)
    out, folder = tmp_path / "r.csv", tmp_path / "maps"

    def column():
        return {r["file"]: r["heatmap"] for r in csv.DictReader(open(out, encoding="utf-8"))}

    run_batch([tmp_path / "in"], out, ensemble)
    assert set(column().values()) == {""}
    run_batch([tmp_path / "in"], out, ensemble, heatmaps=HeatmapOptions(folder, every=True))
    drawn = column()
    assert all(drawn.values()) and all(Path(p).is_file() for p in drawn.values())
    summary = run_batch([tmp_path / "in"], out, ensemble, heatmaps=HeatmapOptions(folder, every=True))
    assert column() == drawn and summary.counts.skipped == 3  # kept, and nothing scored again
    run_batch([tmp_path / "in"], out, ensemble)
    assert column() == drawn


def test_explain_prints_probabilities_and_writes_figure(models_dir, tmp_path, monkeypatch):
    image = write_image(tmp_path / ("inputs-of-the-haematology-lab-" * 4) / "case.png", seed=4, size=64)
    monkeypatch.chdir(tmp_path)  # the figure goes to the current folder, never beside the input
    result = CliRunner().invoke(app, ["explain", str(image), "--models", str(models_dir)])
    assert result.exit_code == 0, result.output
    for name in ("resnet50", "efficientnet_b3", "alexnet", "vgg16", "ensemble"):
        assert name in result.output
    assert str(image) in result.output.splitlines()  # whole on its line: a table title broke it mid-word
    assert (tmp_path / "case-heatmap.png").is_file() and not (image.parent / "case-heatmap.png").exists()
