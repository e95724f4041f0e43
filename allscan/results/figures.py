"""Rendering Grad-CAM maps as PNG figures: the ensemble overlay and the per-model maps side by side, and
below them, when cells were looked for, the most blast-like cells."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from allscan import __version__
from allscan.fileio import atomic_write
from allscan.images import OWN_FIGURE_SOFTWARE
from allscan.models.gradcam import resize_map
from allscan.results.gallery import colour_of, draw_cells
from allscan.results.types import CellFindings

_ALPHA = 0.45
_LABEL_HEIGHT = 16
_GAP = 4
CELL_TILE = 96
"""Pixels a side of each cell crop in a figure's row of cells."""
FIGURE_CELLS = 12
"""Most blast-like cells shown below a figure (fewer when the figure is narrower)."""


@dataclass(frozen=True)
class CellView:
    """An image's cells as its figure shows them.

    Attributes:
        findings: The cells and the cell classifier's answers.
        scale: Pixels of the figure's image panel per pixel of the image file.
        crops: The crops the classifier judged (colour normalised), ``(n, s, s, 3)`` uint8, in cell order.
    """

    findings: CellFindings
    scale: float
    crops: np.ndarray


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


def _image_panel(rgb: np.ndarray, cells: CellView | None) -> Image.Image:
    if cells is None:
        return _labelled(rgb, "image")
    boxed = Image.fromarray(rgb)
    draw_cells(boxed, cells.findings, cells.scale)
    return _labelled(np.asarray(boxed), f"image: {cells.findings.count} cells, {cells.findings.blasts} blasts")


def _cell_row(cells: CellView, width: int) -> Image.Image:
    """The most blast-like cells as the classifier saw them, framed blast or other, p(blast) under each."""
    findings = cells.findings
    step = CELL_TILE + _GAP
    shown = findings.most_blast_like(max(1, min(FIGURE_CELLS, (width + _GAP) // step)))
    row = Image.new("RGB", (width, 2 * _LABEL_HEIGHT + CELL_TILE + 4), "white")
    draw = ImageDraw.Draw(row)
    draw.text((3, 2), f"most blast-like cells, colour normalised as the cell classifier sees them (a blast at "
                      f"p(blast) >= {findings.threshold:.3f})" if shown else "no white cells found", fill="black")
    for i, cell in enumerate(shown):
        x = i * step
        crop = Image.fromarray(cells.crops[cell.cell - 1]).resize((CELL_TILE - 4, CELL_TILE - 4), Image.BICUBIC)
        draw.rectangle((x, _LABEL_HEIGHT, x + CELL_TILE - 1, _LABEL_HEIGHT + CELL_TILE - 1),
                       outline=colour_of(cell, findings.threshold), width=2)
        row.paste(crop, (x + 2, _LABEL_HEIGHT + 2))
        draw.text((x + 3, _LABEL_HEIGHT + CELL_TILE + 2), f"p={cell.p_blast:.3f}", fill="black")
    return row


def heatmap_figure(rgb: np.ndarray, combined: np.ndarray, maps: Mapping[str, np.ndarray],
                   probabilities: Mapping[str, float], p_all: float, cells: CellView | None = None) -> Image.Image:
    """One strip: the image, the ensemble overlay, then each model's overlay, labelled with probabilities;
    with ``cells``, their boxes on the image and a row of the most blast-like below."""
    height, width = rgb.shape[:2]
    panels = [_image_panel(rgb, cells), _labelled(overlay(rgb, combined), f"ensemble p(ALL)={p_all:.3f}")]
    for name, cam in maps.items():  # p(ALL), told apart from the p(blast) under the cells
        panels.append(_labelled(overlay(rgb, resize_map(cam, width, height)),
                                f"{name} p(ALL)={probabilities[name]:.3f}"))
    strip_width = sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    row = _cell_row(cells, strip_width) if cells is not None else None
    figure = Image.new("RGB", (strip_width, panels[0].height + (row.height + _GAP if row else 0)), "white")
    x = 0
    for panel in panels:
        figure.paste(panel, (x, 0))
        x += panel.width + _GAP
    if row is not None:
        figure.paste(row, (0, panels[0].height + _GAP))
    return figure


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG marked as allscan's (a ``Software`` text chunk), so no run scores it."""
    marker = PngInfo()
    marker.add_text("Software", f"{OWN_FIGURE_SOFTWARE} {__version__}")
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=marker))
