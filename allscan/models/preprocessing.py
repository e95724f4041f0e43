"""Per-model input preprocessing, applied to float32 RGB batches in 0-255.

Each function is named in the model registry and in the models manifest, so the
same transform is used in training, evaluation and inference.
"""

from collections.abc import Callable

import numpy as np

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def caffe(x):
    """RGB→BGR and ImageNet mean subtraction, as ResNet-50 and VGG16 were trained."""
    return x[..., ::-1] - _CAFFE_MEAN_BGR


def raw(x):
    """Pass 0-255 through: EfficientNet rescales and normalises inside the model."""
    return x


def symmetric(x):
    """Scale 0-255 to [-1, 1]; our AlexNet's input convention."""
    return x / 127.5 - 1.0


PREPROCESSORS: dict[str, Callable] = {"caffe": caffe, "raw": raw, "symmetric": symmetric}


def get_preprocessor(name: str) -> Callable:
    """Return the preprocessing function registered under ``name``."""
    try:
        return PREPROCESSORS[name]
    except KeyError:
        raise KeyError(f"unknown preprocessing {name!r}; known: {', '.join(PREPROCESSORS)}") from None
