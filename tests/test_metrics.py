"""Evaluation figures on fixed predictions, and tuning the ensemble on validation predictions."""

import numpy as np
import pytest

from allscan.training.metrics import compute_metrics, roc_auc
from allscan.training.tune import tune_ensemble, tune_review_band, tune_threshold, tune_weights


def test_metrics_on_a_fixed_set():
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2, 0.1, 0.3, 0.55, 0.05])
    m = compute_metrics(labels, probs, 0.5, review=[0, 0, 0, 1, 1, 0, 0, 0, 1, 0])
    assert m.confusion_matrix == [[3, 1], [2, 4]]
    assert m.n == 10
    assert m.accuracy == pytest.approx(0.7)
    assert m.precision == pytest.approx(4 / 5)
    assert m.recall == pytest.approx(4 / 6)
    assert m.specificity == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert m.balanced_accuracy == pytest.approx((4 / 6 + 3 / 4) / 2)
    # 24 positive/negative pairs; positives above negatives: 0.9,0.8,0.7,0.6 beat all 4 (16);
    # 0.4 beats 0.1,0.3,0.05 (3); 0.2 beats 0.1,0.05 (2) → 21/24.
    assert m.roc_auc == pytest.approx(21 / 24)
    assert m.review == 3


def test_roc_auc_counts_ties_half_and_needs_both_classes():
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.9]))


def test_threshold_at_one_works_for_all_normal_predictions():
    m = compute_metrics([0, 0, 1], [0.1, 0.2, 0.3], threshold=0.5)
    assert m.precision == 0.0 and m.recall == 0.0 and m.f1 == 0.0 and m.specificity == 1.0


def test_tuning_prefers_the_informative_model():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = np.clip(labels * 0.7 + 0.15 + rng.normal(0, 0.1, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    weights = tune_weights({"good": good, "noise": noise}, labels)
    assert weights["good"] > 0.8 and weights["good"] + weights["noise"] == pytest.approx(1.0)
    config = tune_ensemble({"good": good, "noise": noise}, labels, "synthetic").config
    assert config.weights == {"good": 1.0, "noise": 0.0}
    low, high = config.review_band
    assert low <= config.threshold <= high


def test_brier_and_expected_calibration_error_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.95, 0.95])
    m = compute_metrics(labels, p, 0.5)
    assert m.brier == pytest.approx((0.05**2 + 0.15**2 + 0.45**2 + 0.05**2 + 0.05**2) / 5)
    # bins: [0,.1) {0.05: 0 ALL}, [.1,.2) {0.15: 0}, [.5,.6) {0.55: 1}, [.9,1] {0.95, 0.95: 1, 1}
    assert m.ece == pytest.approx((0.05 + 0.15 + 0.45 + 2 * 0.05) / 5)


def test_intervals_wilson_for_proportions_and_bootstrap_for_the_rest():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    p = np.clip(labels * 0.5 + 0.25 + rng.normal(0, 0.2, 300), 0, 1)
    m = compute_metrics(labels, p, 0.5, intervals=True, resamples=300)
    (tn, fp), (fn, tp) = m.confusion_matrix
    from allscan.training.operating_point import wilson_interval

    assert m.intervals["recall"] == pytest.approx(list(wilson_interval(tp, tp + fn)))
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "brier",
                 "ece"):
        low, high = m.intervals[name]
        assert low <= getattr(m, name) <= high and high - low < 0.3, name
    assert compute_metrics(labels, p, 0.5).intervals == {}


def test_threshold_moves_to_separate_shifted_scores():
    labels = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.5, 0.7, 50), np.linspace(0.75, 0.95, 50)])
    t = tune_threshold(labels, p)
    assert 0.7 < t <= 0.75
    assert compute_metrics(labels, p, t).balanced_accuracy == 1.0


def test_review_band_catches_errors_near_threshold():
    labels = np.array([0] * 20 + [1] * 80)
    p = np.concatenate([np.full(18, 0.05), [0.55, 0.6], [0.45, 0.42], np.full(78, 0.95)])
    low, high = tune_review_band(labels, p, 0.5)
    wrong = (p >= 0.5) != (labels == 1)
    assert (((p >= low) & (p < high)) & wrong).sum() == 4
    assert high - low < 0.5


def test_plots_are_written_as_png_with_matplotlib(tmp_path):
    from PIL import Image

    from allscan.images import find_images
    from allscan.training.plots import write_plots

    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2, 0.1, 0.3, 0.55, 0.05])
    metrics = {"a": compute_metrics(labels, probs, 0.5, intervals=True, resamples=50),
               "ensemble": compute_metrics(labels, probs[::-1], 0.5)}
    written = write_plots(tmp_path / "plots", labels, {"a": probs, "ensemble": probs[::-1]}, metrics)
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_a.png", "confusion_ensemble.png", "precision_recall.png", "reliability.png", "roc.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200
    assert find_images([tmp_path / "plots"]) == []  # allscan's own figures are never scored as smears


def test_competent_models_share_the_vote_equally():
    from allscan.training.tune import member_weights

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    sharp = np.where(labels == 1, 0.99, 0.01)  # a fitted search would give this one all the weight
    good = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.05, 300), 0, 1)
    weak = rng.uniform(0, 1, 300)
    assert tune_weights({"sharp": sharp, "good": good, "weak": weak}, labels)["sharp"] == 1.0
    assert member_weights({"sharp": sharp, "good": good, "weak": weak}, labels) == {
        "good": 0.5, "sharp": 0.5, "weak": 0.0}
