"""Training-time augmentation on RGB images in 0-255: geometry, scale and stain colour.

The label box is blanked when the dataset is loaded (:func:`allscan.training.dataset.load_split`),
before any augmentation, so every augmented view keeps it blanked.
"""

import numpy as np

from allscan._tf import keras, tf

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
"""Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) in optical-density RGB."""
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)

STAIN_SCALE = 0.1
"""Each stain's optical density is scaled by a factor drawn from 1 ± this…"""
STAIN_SHIFT = 0.05
"""…and shifted by a value drawn from ± this (Tellez et al. 2019 use 0.05 "light", 0.2 "strong")."""
SCALE_JITTER = 0.25
"""Fields are zoomed in or out by up to this share (±25%), covering other labs' magnifications."""
_MIN_INTENSITY = 1.0 / 255.0

RECIPE = (
    "flips, 90° rotations; scale jitter ±25% and translation ±6% (reflect fill); HED stain augmentation"
    f" (Tellez et al. 2019: Ruifrok-Johnston colour deconvolution, each stain's optical density scaled by"
    f" U(1-{STAIN_SCALE:g}, 1+{STAIN_SCALE:g}) and shifted by U(-{STAIN_SHIFT:g}, {STAIN_SHIFT:g}));"
    " brightness ±0.04, contrast 0.92-1.08; label box blanked before augmentation"
)
"""What the augmentation does, recorded in the manifest when a model is shipped."""


def rgb_to_hed(rgb):
    """Optical densities of haematoxylin, eosin and DAB for float RGB in 0-1, shape ``(..., 3)``."""
    density = -tf.math.log(tf.maximum(rgb, _MIN_INTENSITY))
    return tf.tensordot(density, tf.constant(HED_FROM_RGB), axes=1)


def hed_to_rgb(hed):
    """Inverse of :func:`rgb_to_hed`, clipped to 0-1."""
    density = tf.tensordot(hed, tf.constant(RGB_FROM_HED), axes=1)
    return tf.clip_by_value(tf.exp(-density), 0.0, 1.0)


def stain_jitter(rgb, scale, shift):
    """Scale and shift each stain's optical density: ``hed * scale + shift`` (both of shape ``(3,)``)."""
    return hed_to_rgb(rgb_to_hed(rgb) * scale + shift)


def random_stain(rgb, scale: float = STAIN_SCALE, shift: float = STAIN_SHIFT):
    """HED stain augmentation (Tellez et al. 2019) with factors drawn per image."""
    alpha = tf.random.uniform((3,), 1.0 - scale, 1.0 + scale)
    beta = tf.random.uniform((3,), -shift, shift)
    return stain_jitter(rgb, alpha, beta)


def augment_image(image):
    """Random flips, 90° rotations, HED stain jitter and mild brightness/contrast jitter.

    Returns a float32 image in 0-255. Brightness and contrast jitter are kept small: on
    this data strong jitter measurably hurt accuracy. Stain jitter in HED space changes
    haematoxylin and eosin uptake independently, as between labs and staining batches.
    """
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, k=tf.random.uniform((), 0, 4, dtype=tf.int32))
    x = random_stain(x)
    x = tf.image.random_brightness(x, 0.04)
    x = tf.image.random_contrast(x, 0.92, 1.08)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def geometry_layers(seed: int):
    """Scale jitter (zoom in or out by up to 25%) and small translation, per image of a batch."""
    return keras.Sequential(
        [
            keras.layers.RandomZoom((-SCALE_JITTER, SCALE_JITTER), fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed + 1),
        ],
        name="augment_geometry",
    )
