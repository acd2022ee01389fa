import numpy as np
import pytest

from sadt.metrics import crps, scaled_mae


def crps_by_loops(truth, samples, k):
    """LLMTime's quantile CRPS written out step by step."""
    total = 0.0
    for j in range(1, k + 1):
        q = j / k
        for t in range(truth.size):
            q_hat = np.quantile(samples[:, t], q)
            total += 2 * abs((q_hat - truth[t]) * ((1.0 if truth[t] <= q_hat else 0.0) - q))
    return total / (k * np.abs(truth).sum())


def test_crps_equals_the_direct_computation():
    rng = np.random.default_rng(0)
    truth, samples = rng.normal(5, 1, size=7), rng.normal(5, 2, size=(30, 7))
    assert crps(truth, samples) == pytest.approx(crps_by_loops(truth, samples, 20), rel=1e-12)


def test_crps_approaches_the_energy_form_with_many_quantiles():
    """CRPS(F, y) = E|X - y| - E|X - X'|/2; the quantile form converges to it (normalised by Σ|y|)."""
    rng = np.random.default_rng(1)
    truth, samples = rng.normal(10, 1, size=3), rng.normal(10, 1.5, size=(400, 3))
    energy = sum(
        np.abs(samples[:, t] - truth[t]).mean() - 0.5 * np.abs(samples[:, t][:, None] - samples[:, t][None]).mean()
        for t in range(3)
    ) / np.abs(truth).sum()
    assert crps(truth, samples, n_quantiles=2000) == pytest.approx(energy, rel=0.02)


def test_perfect_forecast_scores_zero_and_scaled_mae_by_hand():
    truth = np.array([1.0, 2.0, 4.0])
    assert crps(truth, np.tile(truth, (5, 1))) == pytest.approx(0.0)
    samples = np.array([[2.0, 2.0, 2.0], [0.0, 2.0, 6.0], [1.0, 3.0, 5.0]])  # medians 1, 2, 5
    assert scaled_mae(truth, samples) == pytest.approx((0 + 0 + 1) / 3 / (7 / 3))


def test_metrics_reject_mismatched_or_nan_samples():
    with pytest.raises(ValueError, match="steps"):
        crps(np.ones(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="sample 1"):
        scaled_mae(np.ones(2), np.array([[1.0, 1.0], [np.nan, 1.0]]))
