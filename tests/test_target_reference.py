"""The importance-sampling reference for π*: exact on a Gaussian reward, stable at large λ, and the
per-method scores on rows whose answers are known."""


import numpy as np
import pytest

from benchmarks.target_reference import equal_budget_differences, importance_reference, score_rows  # noqa: E402


def test_gaussian_rewards_give_the_closed_form_tilt_and_log_partition():
    """r ~ N(μ, σ²) under p: π* ∝ p exp(λ r) is N(μ + λσ², σ²), log Z / λ = μ + λσ²/2, ESS / N = exp(−λ²σ²)."""
    mu, sigma, lam = -0.7, 0.3, 2.0
    rewards = np.random.default_rng(0).normal(mu, sigma, 400_000)
    ref = importance_reference(rewards, lam)
    assert ref["target_reward"] == pytest.approx(mu + lam * sigma**2, abs=3e-3)
    assert ref["value_is"] == pytest.approx(mu + lam * sigma**2 / 2, abs=3e-3)
    assert ref["prior_reward"] == pytest.approx(mu, abs=2e-3)
    assert ref["ess"] / rewards.size == pytest.approx(np.exp(-(lam * sigma) ** 2), abs=0.02)


def test_large_lambda_does_not_overflow_and_one_dominant_sample_has_ess_one():
    ref = importance_reference(np.array([0.0, -1000.0]), lam=50.0)
    assert ref["value_is"] == pytest.approx(-np.log(2) / 50.0)  # log((e^0 + e^-50000) / 2) / λ
    assert ref["target_reward"] == 0.0 and ref["ess"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 2 finite rewards"):
        importance_reference(np.array([0.0, np.nan]), lam=1.0)


def test_scores_are_the_share_of_the_gap_closed_and_the_root_error_against_v_is():
    references = {"A": {"prior_reward": -1.0, "target_reward": 0.0, "value_is": -0.5},
                  "B": {"prior_reward": -2.0, "target_reward": -1.0, "value_is": -1.5}}
    rows = [{"series": w, "method": m, "curve": c, "reward": reward, "root_value": root}
            for w, m, c, reward, root in [("A", "maxent_ts@20", "MC-only", -0.75, -0.4),
                                          ("B", "maxent_ts@20", "MC-only", -1.75, -1.7),
                                          ("A", "hybrid@20", "hybrid", -0.5, -0.5),
                                          ("B", "hybrid@20", "hybrid", -1.0, -1.5),
                                          ("C", "hybrid@20", "hybrid", 9.0, 9.0)]]  # C has no reference
    scores = {s["method"]: s for s in score_rows(rows, references, np.random.default_rng(0), n_boot=200)}
    assert scores["maxent_ts@20"]["share_closed"] == pytest.approx(0.25)
    assert scores["maxent_ts@20"]["root_error"] == pytest.approx(0.15)
    assert scores["hybrid@20"]["share_closed"] == pytest.approx(0.75) and scores["hybrid@20"]["windows"] == 2
    assert scores["hybrid@20"]["root_error"] == pytest.approx(0.0)
    assert scores["hybrid@20"]["share_low"] <= 0.75 <= scores["hybrid@20"]["share_high"]
    assert scores["maxent_ts@20"]["root_bias"] == pytest.approx(-0.05)  # signed: (+0.1 − 0.2) / 2


def test_the_importance_sampling_root_estimate_is_scored_where_a_row_has_one():
    references = {"A": {"prior_reward": -1.0, "target_reward": 0.0, "value_is": -0.5},
                  "B": {"prior_reward": -2.0, "target_reward": -1.0, "value_is": -1.5}}
    rows = [{"series": "A", "method": "hybrid@20", "curve": "hybrid", "reward": -0.5, "root_value": -0.5,
             "root_value_is": -0.6},
            {"series": "B", "method": "hybrid@20", "curve": "hybrid", "reward": -1.0, "root_value": -1.5,
             "root_value_is": -1.3},
            {"series": "A", "method": "maxent_ts@20", "curve": "MC-only", "reward": -1.0, "root_value": -0.5}]
    scores = {s["method"]: s for s in score_rows(rows, references, np.random.default_rng(0), n_boot=50)}
    assert scores["hybrid@20"]["is_estimate_bias"] == pytest.approx(0.05)  # (−0.1 + 0.2) / 2
    assert scores["hybrid@20"]["is_estimate_error"] == pytest.approx(0.15)
    assert np.isnan(scores["maxent_ts@20"]["is_estimate_error"])  # an older row without the estimate


def test_equal_budget_differences_pair_each_hybrid_row_with_mc_only_at_its_budget_and_sampler():
    references = {"A": {"value_is": -0.5}, "B": {"value_is": -1.5}}
    rows = [{"series": w, "method": m, "reward": reward, "root_value_is": root}
            for w, m, reward, root in [("A", "maxent_ts@20 resampled", -1.0, -0.6),  # IS error 0.1
                                       ("B", "maxent_ts@20 resampled", -2.0, -1.2),  # 0.3
                                       ("A", "hybrid@20 resampled", -0.8, -0.45),  # 0.05
                                       ("B", "hybrid@20 resampled", -1.6, -1.5),  # 0.0
                                       ("A", "maxent_ts@20", -3.0, np.nan),  # another sampler: not a twin
                                       ("A", "hybrid@50 resampled", 0.0, -0.5)]]  # no MC-only twin
    [diff] = equal_budget_differences(rows, references, np.random.default_rng(0), n_boot=200)
    assert (diff["hybrid"], diff["mc_only"], diff["windows"]) == ("hybrid@20 resampled", "maxent_ts@20 resampled", 2)
    assert diff["reward_diff"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert diff["is_error_diff"] == pytest.approx(-0.175)  # ((0.05 − 0.1) + (0.0 − 0.3)) / 2
    assert diff["reward_diff_ci"][0] <= 0.3 <= diff["reward_diff_ci"][1]
