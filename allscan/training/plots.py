"""Evaluation figures as PNG, drawn with matplotlib from scikit-learn's curves (the ``train`` extra).

``roc.png`` and ``precision_recall.png`` hold every model's curve and the ensemble's (drawn only
when the labels hold both classes: with one, neither curve is defined), ``reliability.png`` the
reliability diagram (10 equal-width bins) with a histogram of the probabilities, and
``confusion_NAME.png`` each confusion matrix.
"""

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from allscan import __version__
from allscan.fileio import atomic_write
from allscan.images import OWN_FIGURE_SOFTWARE
from allscan.training.metrics import ECE_BINS, Metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    # Marked as allscan's, as every figure it writes, so that no run scores a plot left among smears.
    marker = {"Software": f"{OWN_FIGURE_SOFTWARE} {__version__}"}
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata=marker))
    _pyplot().close(figure)


def roc_figure(labels: np.ndarray, curves: Mapping[str, np.ndarray], metrics: Mapping[str, Metrics]):
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1)
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, linewidth=2 if name == "ensemble" else 1.2,
                label=f"{name} AUC {metrics[name].roc_auc:.3f}{_interval(metrics[name], 'roc_auc')}")
    ax.set(xlabel="false positive rate (normal called ALL)", ylabel="true positive rate (recall of ALL)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    return figure


def precision_recall_figure(labels: np.ndarray, curves: Mapping[str, np.ndarray]):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for name, scores in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        ax.plot(recall, precision, linewidth=2 if name == "ensemble" else 1.2, label=f"{name} AP {ap:.3f}")
    ax.axhline(np.mean(labels), color="#bbbbbb", linewidth=1)
    ax.set(xlabel="recall (ALL)", ylabel="precision (ALL)", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return figure


def reliability_figure(labels: np.ndarray, curves: Mapping[str, np.ndarray], metrics: Mapping[str, Metrics]):
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    figure, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 7), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=1, label="perfectly calibrated")
    for name, scores in curves.items():
        observed, predicted = calibration_curve(labels, scores, n_bins=ECE_BINS, strategy="uniform")
        ax.plot(predicted, observed, marker="o", linewidth=2 if name == "ensemble" else 1.2,
                label=f"{name} ECE {metrics[name].ece:.3f}{_interval(metrics[name], 'ece')}")
        hist.hist(scores, bins=ECE_BINS, range=(0, 1), histtype="step", label=name)
    ax.set(ylabel="observed share of ALL", ylim=(0, 1.01), title=f"Reliability ({ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="predicted p(ALL)", ylabel="images", yscale="log", xlim=(0, 1))
    return figure


def confusion_figure(name: str, metrics: Metrics):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay(np.asarray(metrics.confusion_matrix), display_labels=["normal", "ALL"]).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(f"{name} (rows: true, columns: predicted)", fontsize=9)
    return figure


def _interval(metrics: Metrics, name: str) -> str:
    if not np.isfinite(metrics.intervals.get(name, [np.nan])).all():
        return ""
    low, high = metrics.intervals[name]
    return f" ({low:.3f}-{high:.3f})"


CURVE_FILES = ("roc.png", "precision_recall.png")
"""The figures that need both classes."""


def plot_files(folder: Path, names: Iterable[str]) -> list[Path]:
    """Every file :func:`write_plots` may write into ``folder`` for the curves ``names`` (models and ensemble)."""
    folder = Path(folder)
    return [folder / file for file in (*CURVE_FILES, "reliability.png")] + [folder / f"confusion_{n}.png"
                                                                             for n in names]


def write_plots(folder: Path, labels: np.ndarray, curves: Mapping[str, np.ndarray],
                metrics: Mapping[str, Metrics]) -> list[Path]:
    """ROC and precision-recall figures over every curve (when ``labels`` hold both classes), the reliability
    figure, and one confusion matrix per model; the files written."""
    folder = Path(folder)
    labels = np.asarray(labels).astype(int)
    draw = {"reliability.png": lambda: reliability_figure(labels, curves, metrics)}
    if len(np.unique(labels)) == 2:
        draw = {"roc.png": lambda: roc_figure(labels, curves, metrics),
                "precision_recall.png": lambda: precision_recall_figure(labels, curves), **draw}
    for name, m in metrics.items():
        draw[f"confusion_{name}.png"] = lambda name=name, m=m: confusion_figure(name, m)
    for file, figure in draw.items():
        _save(figure(), folder / file)
    return [folder / file for file in draw]
