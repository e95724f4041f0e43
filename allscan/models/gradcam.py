"""Grad-CAM (Selvaraju et al. 2017) for each ensemble member and the weighted ensemble map.

Each model's map is taken at its last convolutional block: the feature map that
feeds the global pooling layer named ``pool``, differentiated for the ALL logit
(the layer ``all_logit``) with ``tf.GradientTape``. TensorFlow is imported when a map is first asked
for: a run scored in OpenVINO without heatmaps never loads it.
"""

from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image

from allscan.models.preprocessing import get_preprocessor

FEATURE_LAYER = "pool"
"""The pooled-features layer every registry architecture names so: Grad-CAM differentiates the map that
feeds it, and its output is the representation the out-of-domain guard and site heads use."""
LOGIT_LAYER = "all_logit"


def split_model(model) -> tuple[Callable, Callable]:
    """Split a model into ``features(x)`` (the map before pooling) and ``head(features) -> ALL logit``."""
    from allscan._tf import keras

    pool = model.get_layer(FEATURE_LAYER)
    features = keras.Model(model.inputs, pool.input)
    after = []
    reached = False
    for layer in model.layers:
        if layer is pool:
            reached = True
        if reached:
            after.append(layer)
            if layer.name == LOGIT_LAYER:
                break
    if not after or after[-1].name != LOGIT_LAYER:
        raise ValueError(f"model {model.name} has no {LOGIT_LAYER!r} layer after {FEATURE_LAYER!r}")

    def head(x):
        for layer in after:
            x = layer(x, training=False)
        return x

    return features, head


def compiled_gradcam(model, preprocessing: str, input_size: int) -> Callable:
    """A compiled function: uint8 batch ``(n, s, s, 3)`` → Grad-CAM maps ``(n, h, w)`` in [0, 1]."""
    from allscan._tf import tf

    features, head = split_model(model)
    preprocess = get_preprocessor(preprocessing)

    @tf.function(input_signature=[tf.TensorSpec((None, input_size, input_size, 3), tf.uint8)], reduce_retracing=True)
    def gradcam(batch):
        x = preprocess(tf.cast(batch, tf.float32))
        with tf.GradientTape() as tape:
            fmap = features(x, training=False)
            tape.watch(fmap)
            logit = tf.reduce_sum(head(fmap))
        grads = tape.gradient(logit, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cam, peak)

    return gradcam


def resize_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a [0, 1] map to the image's size."""
    image = Image.fromarray(cam.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)


def ensemble_map(maps: Mapping[str, np.ndarray], weights: Mapping[str, float], width: int, height: int) -> np.ndarray:
    """Per-model maps resized to the image and averaged with the ensemble weights, scaled to [0, 1]."""
    total = sum(weights.get(n, 0.0) for n in maps) or float(len(maps))
    combined = sum((weights.get(n, 0.0) if total else 1.0) * resize_map(m, width, height) for n, m in maps.items())
    combined = np.asarray(combined, dtype=np.float32) / total
    peak = combined.max()
    return combined / peak if peak > 0 else combined
