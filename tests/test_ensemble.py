"""The soft vote: probability, verdict, agreement and the review flag."""

import pytest

from allscan.scoring.vote import combine
from allscan.models.manifest import EnsembleConfig

CONFIG = EnsembleConfig({"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.0}, threshold=0.6, review_band=(0.4, 0.8))


def test_weighted_probability_and_verdict():
    score = combine({"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.0}, CONFIG)
    assert score.p_all == pytest.approx(0.9)
    assert score.verdict == "ALL" and score.agreement == 3
    assert not score.review  # the zero-weight model's dissent does not flag it


def test_review_in_band_or_on_disagreement():
    assert combine({"a": 0.7, "b": 0.7, "c": 0.7, "d": 0.7}, CONFIG).review  # 0.7 inside the band
    disagree = combine({"a": 0.95, "b": 0.95, "c": 0.5, "d": 0.95}, CONFIG)
    assert disagree.p_all == pytest.approx(0.86) and disagree.verdict == "ALL"
    assert disagree.review  # outside the band, but a weighted model votes normal
    normal = combine({"a": 0.05, "b": 0.1, "c": 0.2, "d": 0.9}, CONFIG)
    assert normal.verdict == "normal" and not normal.review and normal.agreement == 1


def test_models_loaded_on_first_use_score_like_eager_ones(models_dir, ensemble):
    import numpy as np

    from allscan.models.ensemble import Ensemble

    lazy = Ensemble.load(models_dir, load_models=False)
    assert not any(m.loaded for m in lazy.members)
    rng = np.random.default_rng(0)
    batches = {s: rng.integers(0, 256, (3, s, s, 3), dtype=np.uint8) for s in ensemble.input_sizes}
    got, want = lazy.outputs(batches)[0], ensemble.outputs(batches)[0]
    assert all(m.loaded for m in lazy.members)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)


def test_a_tampered_model_is_refused_even_when_loading_is_deferred(models_copy):
    from allscan.models.ensemble import Ensemble
    from allscan.models.manifest import ManifestError

    victim = next(models_copy.glob("*.keras"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="does not match the manifest"):
        Ensemble.load(models_copy, load_models=False)
