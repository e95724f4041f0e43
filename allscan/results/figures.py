"""Rendering Grad-CAM maps as PNG figures: the ensemble overlay and the per-model maps side by side."""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from allscan import __version__
from allscan.fileio import atomic_write
from allscan.images import OWN_FIGURE_SOFTWARE
from allscan.models.gradcam import resize_map

_ALPHA = 0.45
_LABEL_HEIGHT = 16


def colormap(cam: np.ndarray) -> np.ndarray:
    """A blue→cyan→yellow→red ramp (jet-like) for a [0, 1] map; ``(h, w, 3)`` uint8."""
    x = np.clip(cam, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Blend a map (already at the image's size) over the image."""
    heat = colormap(cam).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - _ALPHA) + heat * _ALPHA).astype(np.uint8)


def _labelled(panel: np.ndarray, text: str) -> Image.Image:
    image = Image.new("RGB", (panel.shape[1], panel.shape[0] + _LABEL_HEIGHT), "white")
    image.paste(Image.fromarray(panel), (0, _LABEL_HEIGHT))
    ImageDraw.Draw(image).text((3, 2), text, fill="black")
    return image


def heatmap_figure(rgb: np.ndarray, combined: np.ndarray, maps: Mapping[str, np.ndarray],
                   probabilities: Mapping[str, float], p_all: float) -> Image.Image:
    """One strip: the image, the ensemble overlay, then each model's overlay, labelled with probabilities."""
    height, width = rgb.shape[:2]
    panels = [_labelled(rgb, "image"), _labelled(overlay(rgb, combined), f"ensemble p={p_all:.3f}")]
    for name, cam in maps.items():
        panels.append(_labelled(overlay(rgb, resize_map(cam, width, height)), f"{name} p={probabilities[name]:.3f}"))
    figure = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height), "white")
    x = 0
    for panel in panels:
        figure.paste(panel, (x, 0))
        x += panel.width + 4
    return figure


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG marked as allscan's (a ``Software`` text chunk), so no run scores it."""
    marker = PngInfo()
    marker.add_text("Software", f"{OWN_FIGURE_SOFTWARE} {__version__}")
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=marker))
