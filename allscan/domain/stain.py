"""Stain colour: an image's colour statistics, Reinhard normalisation, and HED stain shifts.

Colour statistics are the mean and standard deviation of each channel in CIE L*a*b*
(the space Reinhard et al. 2001 chose because its channels are nearly decorrelated
for natural images). Normalisation maps an image's statistics onto the training set's
reference. Conversions go through Pillow's LittleCMS binding (8-bit L*a*b*).

The HED shift (Ruifrok & Johnston 2001 colour deconvolution; Tellez et al. 2019 used
it for stain augmentation) perturbs each stain's optical density and is used to
simulate another lab's staining.
"""

import cv2
import numpy as np
from PIL import Image, ImageCms

_SRGB = ImageCms.createProfile("sRGB")
_LAB = ImageCms.createProfile("LAB")
_TO_LAB = ImageCms.buildTransform(_SRGB, _LAB, "RGB", "LAB")
_TO_RGB = ImageCms.buildTransform(_LAB, _SRGB, "LAB", "RGB")

STAT_NAMES = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std")


_LAB_LEVELS = np.stack([np.arange(256) * (100.0 / 255.0),
                        np.arange(256, dtype=np.uint8).view(np.int8)], axis=1)[:, [0, 1, 1]]
"""Each 8-bit L*a*b* level as a value per channel: L scaled to 0-100, a and b read as signed bytes."""
_LAB_LUT = _LAB_LEVELS.astype(np.float32).reshape(1, 256, 3)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB to float32 L*a*b* (L in 0-100, a and b signed)."""
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), _TO_LAB))
    return cv2.LUT(lab, _LAB_LUT)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Float L*a*b* back to 8-bit RGB."""
    packed = np.empty(lab.shape, dtype=np.uint8)
    packed[..., 0] = np.clip(np.round(lab[..., 0] * 2.55), 0, 255)
    packed[..., 1:] = np.clip(np.round(lab[..., 1:]), -128, 127).astype(np.int8).view(np.uint8)
    return np.asarray(ImageCms.applyTransform(Image.fromarray(packed, "LAB"), _TO_RGB))


def colour_stats(rgb: np.ndarray) -> np.ndarray:
    """The six Reinhard statistics (L*a*b* means, then standard deviations) of an image.

    LittleCMS's L*a*b* has 256 levels per channel, so each channel's statistics come exactly (in double
    precision) from its histogram, at less than half the cost of summing every pixel's float value.
    """
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), _TO_LAB))
    pixels = lab.shape[0] * lab.shape[1]
    stats = np.empty(6)
    for channel in range(3):
        counts = cv2.calcHist([lab], [channel], None, [256], [0, 256]).ravel().astype(np.float64)
        levels = _LAB_LEVELS[:, channel]
        stats[channel] = counts @ levels / pixels
        stats[3 + channel] = np.sqrt(counts @ np.square(levels - stats[channel]) / pixels)
    return stats


def reinhard(rgb: np.ndarray, stats: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map an image whose colour statistics are ``stats`` onto ``reference`` (Reinhard et al. 2001)."""
    lab = rgb_to_lab(rgb)
    mean, std = stats[:3], np.maximum(stats[3:], 1e-3)
    lab = (lab - mean) / std * reference[3:] + reference[:3]
    return lab_to_rgb(lab)


HED_FROM_RGB = np.linalg.inv(np.array([
    [0.65, 0.70, 0.29],
    [0.07, 0.99, 0.11],
    [0.27, 0.57, 0.78],
]))
"""Inverse of Ruifrok & Johnston's haematoxylin / eosin / DAB optical-density vectors (rows)."""
RGB_FROM_HED = np.linalg.inv(HED_FROM_RGB)


def hed_shift(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift each stain's optical density: ``hed * scale + shift`` (Tellez et al. 2019)."""
    density = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    hed = density @ HED_FROM_RGB
    density = (hed * np.asarray(scale) + np.asarray(shift)) @ RGB_FROM_HED
    return np.clip(256.0 * np.exp(-density) - 1.0, 0, 255).astype(np.uint8)
