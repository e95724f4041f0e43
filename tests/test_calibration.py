"""Calibration, the screening threshold and review band, on synthetic scores with a known answer."""

import numpy as np
import pytest

from allscan.models.calibration import Calibration, Platt, fit_platt, logit, sigmoid
from allscan.scoring.vote import combine
from allscan.models.manifest import EnsembleConfig, Manifest, ModelEntry, load_manifest, save_manifest
from allscan.training.operating_point import review_band, screening_threshold, wilson_interval
from allscan.training.tune import tune_ensemble


def test_wilson_interval_matches_newcombe_1998():
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(411, 411)[1] == 1.0 and wilson_interval(0, 411)[0] == 0.0


def test_platt_fit_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.02, 0.98, 40_000)
    labels = rng.random(40_000) < sigmoid(2.0 * logit(raw) - 1.0)  # the truth: slope 2, intercept -1
    fitted = fit_platt(labels, raw)
    assert fitted.slope == pytest.approx(2.0, abs=0.06) and fitted.intercept == pytest.approx(-1.0, abs=0.06)
    assert fitted.apply(0.5) == pytest.approx(sigmoid(-1.0), abs=0.02)


def test_platt_fit_stays_finite_on_separable_scores_and_needs_both_classes():
    labels = np.array([0] * 50 + [1] * 50)
    fitted = fit_platt(labels, np.r_[np.full(50, 0.1), np.full(50, 0.9)])
    assert 0 < fitted.slope < 20 and np.isfinite(fitted.intercept)
    with pytest.raises(ValueError):
        fit_platt(np.ones(5), np.full(5, 0.7))


def test_identity_platt_returns_its_input_unchanged():
    assert Platt().apply(0.0) == 0.0 and Platt().apply(0.123) == 0.123


def test_combine_calibrates_members_then_the_vote():
    calibration = Calibration({"a": Platt(1.0, np.log(3.0))}, Platt(2.0, 0.0), "test")
    config = EnsembleConfig({"a": 0.5, "b": 0.5}, threshold=0.5, review_band=(0.4, 0.6), calibration=calibration)
    score = combine({"a": 0.5, "b": 0.25}, config)
    assert score.per_model == pytest.approx({"a": 0.75, "b": 0.25})  # b has no scaling: left as is
    assert score.p_all == pytest.approx(0.5)  # mean 0.5, logit 0 → 0.5
    score = combine({"a": 0.5, "b": 0.75}, config)
    assert score.p_all == pytest.approx(0.9)  # mean 0.75: logit ln 3, doubled → 9/10
    assert score.verdict == "ALL" and score.agreement == 2


def test_calibration_is_stored_in_the_manifest_and_its_digest(tmp_path):
    entry = ModelEntry("alexnet", "alexnet.keras", "0" * 64, 16, "symmetric")
    plain = Manifest({"alexnet": entry}, EnsembleConfig({"alexnet": 1.0}))
    calibrated = Manifest({"alexnet": entry}, EnsembleConfig({"alexnet": 1.0}, calibration=Calibration(
        {"alexnet": Platt(1.5, 0.2)}, Platt(0.9, -0.1), "Platt on val")))
    other = Manifest({"alexnet": entry}, EnsembleConfig({"alexnet": 1.0}, calibration=Calibration(
        {"alexnet": Platt(1.5, 0.3)}, Platt(0.9, -0.1), "Platt on val")))
    assert len({plain.digest, calibrated.digest, other.digest}) == 3
    save_manifest(calibrated, tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded.ensemble.calibration == calibrated.ensemble.calibration
    assert loaded.digest == calibrated.digest
    save_manifest(plain, tmp_path)
    assert load_manifest(tmp_path).ensemble.calibration == Calibration()


def test_a_manifest_with_a_broken_calibration_is_refused(tmp_path):
    import json

    from allscan.models.manifest import ManifestError

    entry = ModelEntry("resnet50", "resnet50.keras", "0" * 64, 16, "caffe")
    save_manifest(Manifest({"resnet50": entry}, EnsembleConfig({"resnet50": 1.0}, calibration=Calibration(
        {"resnet50": Platt(1.5, 0.2)}, Platt(), "x"))), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    for broken in ({"slope": "steep", "intercept": 0}, {"slope": float("nan"), "intercept": 0}, {"slope": 1}):
        data["ensemble"]["calibration"]["members"]["resnet50"] = broken
        (tmp_path / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ManifestError, match="malformed"):
            load_manifest(tmp_path)


def test_screening_threshold_keeps_the_recall_lower_bound_at_99_percent():
    # 1000 ALL fields scoring 0.5, 0.5005, …; normals far below. With n = 1000 the Wilson lower bound
    # first reaches 0.99 at 997 caught (0.99122; 996 gives 0.98976), so the three lowest ALL may be missed.
    positives = 0.5 + 0.0004 * np.arange(1000)
    p = np.r_[np.linspace(0.01, 0.2, 100), positives]
    labels = np.r_[np.zeros(100), np.ones(1000)]
    point = screening_threshold(labels, p)
    assert positives[2] < point.threshold < positives[3]
    assert point.threshold == pytest.approx(sigmoid((logit(positives[3]) + logit(positives[2])) / 2))
    assert point.recall == pytest.approx(0.997) and point.recall_lower == pytest.approx(0.99122, abs=1e-5)
    assert point.target_met


def test_screening_threshold_catches_every_all_field_when_few():
    # 411 ALL fields (the validation split's count): only catching all 411 keeps the bound ≥ 0.99
    # (0.99074; 410 gives 0.98635), so the threshold sits just below the lowest ALL score, above the normals.
    positives = np.linspace(0.3, 0.99, 411)
    p = np.r_[np.linspace(0.01, 0.2, 82), positives]
    labels = np.r_[np.zeros(82), np.ones(411)]
    point = screening_threshold(labels, p)
    assert point.threshold == pytest.approx(sigmoid((logit(0.3) + logit(0.2)) / 2))
    assert point.recall == 1.0 and point.target_met


def test_screening_threshold_says_when_the_target_cannot_be_shown():
    point = screening_threshold(np.r_[np.zeros(5), np.ones(20)], np.r_[np.full(5, 0.1), np.linspace(0.4, 0.9, 20)])
    assert not point.target_met and point.recall == 1.0 and 0.1 < point.threshold < 0.4
    with pytest.raises(ValueError):
        screening_threshold(np.zeros(3), np.full(3, 0.5))


def test_review_band_flags_a_five_percent_chance_of_the_other_verdict():
    assert review_band(0.3) == (0.05, 0.95)
    assert review_band(0.02) == (0.02, 0.95)  # a normal verdict below 0.02 has under 5% chance of ALL anyway
    assert review_band(0.97) == (0.05, 0.97)


def test_tune_ensemble_leaves_calibrated_members_nearly_unchanged():
    rng = np.random.default_rng(3)
    n = 6000
    truth = rng.uniform(0.01, 0.99, n)
    labels = (rng.random(n) < truth).astype(int)
    probs = {"good": truth, "noise": rng.uniform(0, 1, n)}
    tuning = tune_ensemble(probs, labels, "synthetic")
    config = tuning.config
    good = config.calibration.members["good"]
    assert good.slope == pytest.approx(1.0, abs=0.1) and good.intercept == pytest.approx(0.0, abs=0.1)
    assert config.weights == {"good": 1.0, "noise": 0.0}
    assert config.calibration.ensemble.slope == pytest.approx(1.0, abs=0.1)
    assert tuning.operating_point.recall_lower >= 0.99 and tuning.operating_point.target_met
    assert config.review_band == review_band(config.threshold)
    assert 0 < tuning.flagged < 1


def test_a_pool_refits_calibration_and_the_threshold_keeps_recall_on_both():
    rng = np.random.default_rng(4)
    val_labels = np.r_[np.zeros(80), np.ones(400)].astype(int)
    val = {"m": np.where(val_labels == 1, rng.uniform(0.6, 0.99, 480), rng.uniform(0.01, 0.3, 480))}
    pool_labels = np.r_[np.zeros(300), np.ones(2000)].astype(int)
    hard = np.where(pool_labels == 1, rng.uniform(0.6, 0.99, 2300), rng.uniform(0.01, 0.3, 2300))
    hard[300:340] = rng.uniform(0.05, 0.3, 40)  # 2% of the pool's ALL fields score among the normals
    alone = tune_ensemble(val, val_labels, "val")
    pooled = tune_ensemble(val, val_labels, "val+pool", ({"m": hard}, pool_labels))
    assert pooled.config.calibration.members != alone.config.calibration.members
    assert "pooled" in pooled.config.calibration.method and "pooled" not in alone.config.calibration.method
    calibration, threshold = pooled.config.calibration, pooled.config.threshold
    for probs, labels in ((val, val_labels), ({"m": np.r_[val["m"], hard]}, np.r_[val_labels, pool_labels])):
        p = calibration.ensemble.apply(calibration.member("m", probs["m"]))
        caught = int((p[labels == 1] >= threshold).sum())
        assert wilson_interval(caught, int(labels.sum()))[0] >= 0.99
    assert pooled.operating_point.recall_lower >= 0.99
