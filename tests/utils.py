"""Synthetic images and tiny models for the tests (no dataset, no trained weights)."""

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from allscan._tf import keras
from allscan.domain.site import DIGEST_KEY, PROFILE_JSON, meta_digest
from allscan.models.manifest import EnsembleConfig, Manifest, ModelEntry, save_manifest, sha256_file
from allscan.models.files import save_half_precision
from allscan.models.registry import CELL_REGISTRY, REGISTRY, ModelSpec

TINY_SIZES = {"resnet50": 16, "efficientnet_b3": 20, "alexnet": 24, "vgg16": 16}
TINY_CELL_SIZES = {"vgg16": 12}


def smear(seed: int = 0, size: int = 64, tint: tuple[int, int, int] = (180, 140, 200)) -> np.ndarray:
    """A random RGB field with a few dark blobs, a stand-in for a smear image."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 235, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(3):
        cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(3, size // 5)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = tint
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int = 0, size: int = 64, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smear(seed, size)).save(path, format=fmt)
    return path


def jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(smear(seed, size)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tiny_model(name: str, size: int, seed: int):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logit = keras.layers.Dense(1, name="all_logit")(x)
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(logit), name=name)


def make_models_dir(folder: Path, threshold: float = 0.5, band: tuple[float, float] = (0.4, 0.6),
                    cells: bool = True) -> Path:
    """A models folder in the shipped format holding four tiny untrained models and, with ``cells``, a
    cell classifier of two tiny models in ``cells/``."""
    _tiny_ensemble(folder, TINY_SIZES, REGISTRY, threshold, band, seed=0)
    if cells:
        _tiny_ensemble(folder / "cells", TINY_CELL_SIZES, CELL_REGISTRY, 0.5, (0.4, 0.6), seed=10)
    return folder


def _tiny_ensemble(folder: Path, sizes: dict[str, int], registry, threshold: float, band: tuple[float, float],
                   seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i, (name, size) in enumerate(sizes.items()):
        path = folder / f"{name}.keras"
        save_half_precision(tiny_model(name, size, seed=seed + i), path)
        spec = registry[name]
        entries[name] = ModelEntry(name, path.name, sha256_file(path), size, spec.preprocessing, "tiny test model")
    weights = {name: 1 / len(entries) for name in entries}
    save_manifest(Manifest(entries, EnsembleConfig(weights, threshold, band)), folder)


def disc_smear(diameter: float, size: tuple[int, int] = (224, 224), seed: int = 0, cells: int | None = None,
               cell_rgb: tuple[int, int, int] = (205, 170, 215), background: tuple[int, int, int] = (238, 232, 242),
               nuclei: int = 1) -> np.ndarray:
    """A smear-like field: red cells as discs of a known ``diameter`` (pale centres), a few dark
    larger nuclei, on a bright background; ``size`` is ``(height, width)``."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.empty((height, width, 3), np.float32)
    image[:] = background
    radius = diameter / 2
    count = cells or int(0.35 * height * width / (np.pi * radius ** 2))

    def paint(cy: float, cx: float, r: float, rgb) -> None:
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        patch = image[y0:y1, x0:x1]
        patch[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rgb

    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        paint(cy, cx, radius, cell_rgb)
        paint(cy, cx, 0.35 * radius, np.add(cell_rgb, background) / 2)
    for _ in range(nuclei):
        paint(rng.uniform(0, height), rng.uniform(0, width), 0.7 * diameter, (90, 40, 150))
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: Path, diameter: float = 16, counts: dict[str, int] | None = None, seed: int = 0,
                  size: tuple[int, int] = (224, 224), **kwargs) -> Path:
    """A ``SPLIT/{normal,ALL}/*.png``-style folder of disc smears (ALL fields get more nuclei)."""
    counts = counts or {"normal": 6, "ALL": 6}
    for k, (label, n) in enumerate(counts.items()):
        for i in range(n):
            rgb = disc_smear(diameter, size, seed=seed + 100 * k + i, nuclei=1 if label == "normal" else 4, **kwargs)
            path = root / label / f"{label}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(path)
    return root


_PROBE = (
    "import sys\n"
    "from allscan.cli import app\n"
    "try:\n"
    "    app(sys.argv[1:], prog_name='allscan')\n"
    "finally:\n"
    "    print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded', file=sys.stderr)\n"
)


def cli_process(*args):
    """Run the CLI in a fresh interpreter: exit code, stderr lines, seconds, whether TensorFlow was imported."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"})
    seconds = time.monotonic() - started
    lines = done.stderr.splitlines()
    return done.returncode, lines[:-1], seconds, lines[-1] == "tensorflow loaded"


@contextlib.contextmanager
def read_only(path):
    """Make ``path`` unwritable for whoever runs the tests: chmod, or for root the immutable attribute."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i: cannot make a read-only location")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def store_at_schema(path: Path, version: int) -> sqlite3.Connection:
    """A results store as an older allscan left it: the first ``version`` schema migrations applied, open."""
    from allscan.results.schema import MIGRATIONS

    db = sqlite3.connect(path)
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        db.executescript(f"BEGIN; {step}; PRAGMA user_version = {number}; COMMIT;")
    return db


def tiny_cell_spec(name: str) -> ModelSpec:
    """The cell member ``name`` as a one-convolution network on 64-px crops, quick to train."""
    def build(input_size, weights=None):
        inputs = keras.Input((input_size, input_size, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="all_logit")(x), name=name)
        if weights is not None:
            model.load_weights(weights)
        return model

    real = CELL_REGISTRY[name]
    return ModelSpec(name, real.architecture, build, 64, real.preprocessing, 1, 1e-2)


def save_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def lab_fields(root: Path, n: int = 5, names: tuple[str, str] = ("ALL", "normal")) -> Path:
    """A lab's labelled fields: 448-px smears, red cells 32 px; ALL fields carry more nuclei."""
    for name, nuclei in zip(names, (6, 1)):
        for i in range(n):
            save_png(root / name / f"{name}-{i}.png", disc_smear(32, (448, 448), seed=700 + 10 * nuclei + i,
                                                                 nuclei=nuclei, cell_rgb=(220, 160, 180)))
    return root


def lab_crops(root: Path, n: int = 10) -> Path:
    """A lab's cell crops: one nucleus centred among 16-px red cells, blasts large and pale."""
    for name, (across, colour) in (("blast", (1.8, (120, 80, 170))), ("normal", (1.1, (80, 30, 140)))):
        for i in range(n):
            rgb = disc_smear(16, (96, 96), seed=2000 * (name == "blast") + i, nuclei=0)
            cv2.circle(rgb, (48, 48), round(across * 8), colour, -1)
            save_png(root / name / f"{name}-{i}.png", rgb)
    return root


def profile_meta(profile: Path) -> dict:
    """A site profile's parsed ``profile.json``."""
    return json.loads((profile / PROFILE_JSON).read_text())


def resign_profile(profile: Path, change) -> None:
    """Change the parsed profile.json and write it back with its digest recomputed."""
    meta = profile_meta(profile)
    change(meta)
    meta[DIGEST_KEY] = meta_digest(meta)
    (profile / PROFILE_JSON).write_text(json.dumps(meta, indent=2))


def adapted_profile(root: Path, models: Path) -> Path:
    """``allscan adapt`` of a lab's fields and cell crops (both parts) on ``models``, into ``root/site``."""
    from typer.testing import CliRunner

    from allscan.cli import app

    result = CliRunner().invoke(app, ["adapt", str(lab_fields(root / "lab")), "--cells", str(lab_crops(root / "cells")),
                                      "--out", str(root / "site"), "--models", str(models)])
    assert result.exit_code == 0, result.output
    return root / "site"


def labelled_fields(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """64-px fields, normal pale, ALL with a dark blob: ``counts`` maps a class folder name to its images."""
    for k, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(seed + 100 * k + i)
            image = np.clip(rng.normal(220, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
            image[10:30, 10:30] = (70, 30, 120) if name.lower() == "all" else (230, 190, 200)
            Image.fromarray(image).save(folder / f"{name}-{i}.png")
    return root


class CtrlCAfter:
    """A run observer that presses Ctrl-C once ``n`` results were reported."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def start(self, total):
        pass

    def result(self, result, skipped):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


class WatchThread:
    """A watcher on a thread for the duration of a ``with`` block (settling 0.3 s unless ``settle`` is given); a
    failure that ends it is kept in ``failure``."""

    def __init__(self, ensemble, folder, out, observer=None, **kw):
        from allscan.run.watch import WatchConfig, Watcher

        config = WatchConfig(folder, out, settle=kw.pop("settle", 0.3), max_delay=0.2, poll_interval=0.05, **kw)
        self.watcher = Watcher(config, ensemble, observer)
        self.failure = None
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        try:
            self.watcher.run()
        except BaseException as exc:
            self.failure = exc

    def __enter__(self):
        self.thread.start()
        time.sleep(0.5)  # let the observer start
        return self

    def __exit__(self, *exc):
        self.watcher.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
