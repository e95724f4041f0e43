"""Synthetic images and tiny models for the tests (no dataset, no trained weights)."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from allscan._tf import keras
from allscan.manifest import EnsembleConfig, Manifest, ModelEntry, save_manifest, sha256_file
from allscan.model_files import save_half_precision
from allscan.registry import REGISTRY

TINY_SIZES = {"resnet50": 16, "efficientnet_b3": 20, "alexnet": 24, "vgg16": 16}


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


def make_models_dir(folder: Path, threshold: float = 0.5, band: tuple[float, float] = (0.4, 0.6)) -> Path:
    """A models folder in the shipped format holding four tiny untrained models."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i, (name, size) in enumerate(TINY_SIZES.items()):
        path = folder / f"{name}.keras"
        save_half_precision(tiny_model(name, size, seed=i), path)
        spec = REGISTRY[name]
        entries[name] = ModelEntry(name, path.name, sha256_file(path), size, spec.preprocessing, "tiny test model")
    weights = {name: 0.25 for name in entries}
    save_manifest(Manifest(entries, EnsembleConfig(weights, threshold, band)), folder)
    return folder
