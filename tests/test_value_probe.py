"""The value probe's statistics: within-group demeaning and the cross-validated ridge fit."""


import numpy as np

from benchmarks.value_probe import demean_by, fit_probe, r_squared  # noqa: E402


def test_demean_by_subtracts_each_groups_own_mean():
    rng = np.random.default_rng(0)
    values, groups = rng.normal(size=(50, 3)), rng.integers(0, 7, 50)
    expected = values.copy()
    for g in np.unique(groups):
        expected[groups == g] -= values[groups == g].mean(axis=0)
    np.testing.assert_allclose(demean_by(values, groups), expected, atol=1e-12)


def _grouped_problem(rng, signal: float):
    """y = signal · x w + a per-group level + noise, over 40 groups of 30 rows."""
    groups = np.repeat(np.arange(40), 30)
    x = rng.normal(size=(len(groups), 8)) + rng.normal(size=(40, 8))[groups]
    y = signal * x @ rng.normal(size=8) + 5.0 * rng.normal(size=40)[groups] + 0.3 * rng.normal(size=len(groups))
    return demean_by(x, groups), demean_by(y, groups), groups


def test_probe_recovers_a_within_group_linear_signal_on_unseen_groups():
    x, y, groups = _grouped_problem(np.random.default_rng(1), signal=1.0)
    train = groups < 30
    w, _ = fit_probe(x[train], y[train], groups[train])
    assert r_squared(y[~train], x[~train] @ w) > 0.95


def test_probe_finds_nothing_in_noise():
    x, y, groups = _grouped_problem(np.random.default_rng(2), signal=0.0)
    train = groups < 30
    w, alpha = fit_probe(x[train], y[train], groups[train])
    assert r_squared(y[~train], x[~train] @ w) < 0.05
