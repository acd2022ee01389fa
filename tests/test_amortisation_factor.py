"""The amortisation factor and the equal-budget gain, on rows whose answers are known."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from amortisation import RealPart, amortisation_factor  # noqa: E402

SERIES = ["A", "B", "C", "D"]


def rows_with(rewards: dict[str, list[float]]) -> list[dict]:
    """One row per (window, method) with the given mean rewards and a root error of 0."""
    return [{"series": s, "method": m, "reward": r[i], "root_error": 0.0}
            for m, r in rewards.items() for i, s in enumerate(SERIES)]


def test_factor_is_the_reference_over_the_first_hybrid_budget_that_matches_and_gains_are_paired():
    config = RealPart(budgets=[20, 50, 200], hybrid_budgets=[20, 50], bootstrap=500)
    rows = rows_with({
        "maxent_ts@20": [-1.0, -0.8, -0.9, -1.1], "maxent_ts@50": [-0.9, -0.7, -0.8, -1.0],
        "maxent_ts@200": [-0.5, -0.5, -0.5, -0.5],
        "hybrid@20": [-0.9, -0.6, -0.9, -0.6], "hybrid@50": [-0.4, -0.5, -0.6, -0.3],  # @50 mean −0.45 ≥ −0.5
    })
    out = amortisation_factor(rows, config, np.random.default_rng(0))
    assert out["factor"] == 200 / 50 and out["mc_self_factor"] == 0.0
    gain_20, low_20, high_20 = out["equal_budget_reward_gain"][20]
    assert gain_20 == pytest.approx(np.mean([0.1, 0.2, 0.0, 0.5]))
    assert low_20 <= gain_20 <= high_20 and low_20 >= 0.0  # every window gains: no resample goes below 0
    assert out["equal_budget_reward_gain"][50][0] == pytest.approx(np.mean([0.5, 0.2, 0.2, 0.7]))


def test_no_matching_budget_gives_a_factor_of_zero():
    config = RealPart(budgets=[20, 200], hybrid_budgets=[20], bootstrap=200)
    rows = rows_with({"maxent_ts@20": [-1.0] * 4, "maxent_ts@200": [0.0] * 4, "hybrid@20": [-0.5] * 4})
    out = amortisation_factor(rows, config, np.random.default_rng(0))
    assert out["factor"] == 0.0 and out["ci_high"] == 0.0
    assert out["equal_budget_reward_gain"][20] == pytest.approx([0.5, 0.5, 0.5])
