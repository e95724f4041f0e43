"""ROC curves and confusion matrices as PNG, drawn with Pillow (no plotting library needed)."""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from allscan.metrics import Metrics
from allscan.overlay import save_png

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    hits = labels[order]
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(hits) - 1]
    tp = np.cumsum(hits)[last]
    fp = np.cumsum(~hits)[last]
    return np.r_[0.0, fp / max((~labels).sum(), 1)], np.r_[0.0, tp / max(labels.sum(), 1)]


def roc_figure(labels: np.ndarray, curves: Mapping[str, np.ndarray], aucs: Mapping[str, float]) -> Image.Image:
    size, margin = 420, 50
    image = Image.new("RGB", (size + 2 * margin + 170, size + 2 * margin), "white")
    draw = ImageDraw.Draw(image)

    def xy(fpr, tpr):
        return margin + fpr * size, margin + (1 - tpr) * size

    draw.rectangle([margin, margin, margin + size, margin + size], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill="#bbbbbb")
    for tick in (0.0, 0.5, 1.0):
        draw.text((margin + tick * size - 8, margin + size + 6), f"{tick:.1f}", fill="black")
        draw.text((margin - 30, margin + (1 - tick) * size - 6), f"{tick:.1f}", fill="black")
    draw.text((margin + size / 2 - 60, margin + size + 24), "false positive rate", fill="black")
    draw.text((4, margin - 20), "true positive rate (ALL)", fill="black")
    for k, (name, scores) in enumerate(curves.items()):
        fpr, tpr = roc_points(labels, scores)
        colour = _COLOURS[k % len(_COLOURS)]
        draw.line([xy(f, t) for f, t in zip(fpr, tpr)], fill=colour, width=2)
        draw.text((margin + size + 12, margin + 16 * k), f"{name} AUC {aucs[name]:.3f}", fill=colour)
    return image


def confusion_figure(name: str, metrics: Metrics) -> Image.Image:
    cell = 110
    image = Image.new("RGB", (2 * cell + 130, 2 * cell + 80), "white")
    draw = ImageDraw.Draw(image)
    (tn, fp), (fn, tp) = metrics.confusion_matrix
    peak = max(tn, fp, fn, tp, 1)
    draw.text((10, 8), f"{name}: rows true, columns predicted", fill="black")
    for r, true in enumerate(("normal", "ALL")):
        draw.text((10, 50 + r * cell + cell / 2), true, fill="black")
        for c, value in enumerate(metrics.confusion_matrix[r]):
            shade = int(255 - 180 * value / peak)
            x0, y0 = 110 + c * cell, 40 + r * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, 255), outline="black")
            draw.text((x0 + cell / 2 - 10, y0 + cell / 2 - 6), str(value), fill="black")
    for c, predicted in enumerate(("normal", "ALL")):
        draw.text((110 + c * cell + cell / 2 - 18, 42 + 2 * cell), predicted, fill="black")
    return image


def write_plots(folder: Path, labels: np.ndarray, curves: Mapping[str, np.ndarray],
                metrics: Mapping[str, Metrics]) -> list[Path]:
    """``roc.png`` with every curve, and ``confusion_NAME.png`` per model and for the ensemble."""
    folder = Path(folder)
    written = [folder / "roc.png"]
    save_png(roc_figure(labels, curves, {n: metrics[n].roc_auc for n in curves}), written[0])
    for name, m in metrics.items():
        path = folder / f"confusion_{name}.png"
        save_png(confusion_figure(name, m), path)
        written.append(path)
    return written
