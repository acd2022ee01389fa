"""The amortisation benchmark: its factor and equal-budget gain on rows whose answers are known, the
held-out windows, the rows a resumed run keeps, and the reward plot."""


import numpy as np
import pytest

from benchmarks.evaluation.amortisation_real import (
    IN_TREE,
    RESAMPLED,
    RealPart,
    anytime_curves,
    heldout_windows,
    kept_row,
    method_means,
    real_rows,
    reference_label,
    rows_to_keep,
    series_of,
)
from benchmarks.evaluation.amortisation_stats import (
    amortisation_factor,
    budget_reaching,
    ess_factor,
    ess_ratios,
    is_log_z_errors,
    plot_curves,
    plot_ess,
)
from benchmarks.evaluation.amortisation_toy import reward_share
from data.series import load_builtin  # noqa: E402

SERIES = ["A", "B", "C", "D"]


def rows_with(rewards: dict[str, list[float]]) -> list[dict]:
    """One row per (window, method) with the given mean rewards, a V̂ root value of 0 and an IS root value
    equal to the reward (so IS root errors are reward gaps)."""
    return [{"series": s, "method": m, "reward": r[i], "root_value": 0.0, "root_value_is": r[i]}
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
    assert out["mean_root_error_vs_reference"]["hybrid@50"] == 0.0
    is_error = out["mean_root_is_error_vs_reference"]  # |IS root − the reference's| per window, averaged
    assert is_error["hybrid@50"] == pytest.approx(np.mean([0.1, 0.0, 0.1, 0.2]), abs=1e-4)
    assert is_error["maxent_ts@20"] == pytest.approx(np.mean([0.5, 0.3, 0.4, 0.6]), abs=1e-4)


def test_no_matching_budget_gives_a_factor_of_zero():
    config = RealPart(budgets=[20, 200], hybrid_budgets=[20], bootstrap=200)
    rows = rows_with({"maxent_ts@20": [-1.0] * 4, "maxent_ts@200": [0.0] * 4, "hybrid@20": [-0.5] * 4})
    out = amortisation_factor(rows, config, np.random.default_rng(0))
    assert out["factor"] == 0.0 and out["ci_high"] == 0.0
    assert out["equal_budget_reward_gain"][20] == pytest.approx([0.5, 0.5, 0.5])


def test_the_in_tree_factor_compares_in_tree_rows_with_in_tree_rows_only():
    config = RealPart(budgets=[20, 200], hybrid_budgets=[20], bootstrap=200)
    search_rows = rows_with({"maxent_ts@20": [-1.0] * 4, "maxent_ts@200": [0.0] * 4, "hybrid@20": [-0.5] * 4})
    in_tree = rows_with({f"maxent_ts@20{IN_TREE}": [-0.6] * 4, f"maxent_ts@200{IN_TREE}": [-0.4] * 4,
                         f"hybrid@20{IN_TREE}": [-0.3] * 4})
    out = amortisation_factor(search_rows + in_tree, config, np.random.default_rng(0), IN_TREE)
    assert out["factor"] == 10.0 and out["mc_self_factor"] == 0.0
    assert out["equal_budget_reward_gain"][20] == pytest.approx([0.3, 0.3, 0.3])
    assert amortisation_factor(search_rows + in_tree, config, np.random.default_rng(0))["factor"] == 0.0


def test_anytime_curves_are_one_search_each_at_the_largest_budget_sampling_the_tree():
    assert anytime_curves(RealPart()) == []  # off by default: the curves of earlier configs are unchanged
    curves = anytime_curves(RealPart(budgets=[50, 20, 200], hybrid_budgets=[20, 100], in_tree=True, hybrid_n0=1.0,
                                     hybrid_guide_scale=0.5))
    (mc_prefix, mc_curve, mc, mc_budgets, mc_head), (hy_prefix, hy_curve, hybrid, hy_budgets, hy_head) = curves
    assert (mc_prefix, mc_curve, mc_budgets, mc_head) == ("maxent_ts", "MC-only", [20, 50, 200], False)
    assert (hy_prefix, hy_curve, hy_budgets, hy_head) == ("hybrid", "hybrid", [20, 100], True)
    assert mc.n_rollouts == 200 and mc.sampling == "tree" and mc.hybrid == "off"
    assert hybrid.n_rollouts == 100 and hybrid.sampling == "tree" and hybrid.hybrid == "visits"
    assert hybrid.hybrid_n0 == 1.0 and hybrid.guide_scale == 0.5 and mc.guide_scale == 1.0


def test_reward_share_is_zero_at_the_prior_and_one_at_the_target():
    reward, prior, target = np.array([0.0, 1.0, 3.0]), np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.2, 0.7])
    share = reward_share(reward, prior, target)  # E_p[r] = 1.0, E_π*[r] = 2.3
    assert share(prior) == pytest.approx(0.0) and share(target) == pytest.approx(1.0)
    assert share(np.array([0.0, 0.0, 1.0])) == pytest.approx((3.0 - 1.0) / 1.3)


def test_heldout_windows_tile_the_test_part_and_each_context_ends_where_its_truth_starts():
    series = load_builtin("Wooly")  # a 24-step test part: two 12-step windows fit, a third does not
    config = RealPart(context_length=48, horizon=12, windows_per_series=3)
    windows = heldout_windows("Wooly", config)
    assert [label for label, _, _ in windows] == ["Wooly", "Wooly+12"]
    start = len(series.context)
    for k, (label, context, truth) in enumerate(windows):
        t = start + 12 * k
        np.testing.assert_array_equal(truth, series.values[t : t + 12])
        np.testing.assert_array_equal(context, series.values[t - 48 : t])
        assert series_of(label) == "Wooly"
    first_only = heldout_windows("Wooly", RealPart(context_length=48, horizon=12))
    np.testing.assert_array_equal(first_only[0][1], series.context[-48:])  # the one-window default is unchanged
    with pytest.raises(ValueError, match="Wooly: test part of 24 steps is shorter than horizon 30"):
        heldout_windows("Wooly", RealPart(horizon=30))
    with pytest.raises(ValueError, match="windows_per_series must be >= 1, got 0"):
        heldout_windows("Wooly", RealPart(windows_per_series=0))


def test_resume_reuses_every_earlier_row_and_a_new_head_only_the_rows_without_it():
    keep = [{"series": "Wine+12", "method": "hybrid@20", "reward": -0.4}]
    assert kept_row(keep, "Wine+12", "hybrid@20", reuse=True) is keep[0]
    assert kept_row(keep, "Wine+12", "hybrid@20", reuse=False) is None
    assert kept_row(keep, "Wine", "hybrid@20", reuse=True) is None  # another window of the same series


def test_an_interrupted_resume_keeps_the_earlier_rows_of_windows_it_has_not_reached():
    earlier = [{"series": w, "method": "maxent_ts@2000", "reward": -0.5} for w in ("Wine", "Wooly")]
    done = [{"series": "Wine", "method": "maxent_ts@2000", "reward": -0.5},
            {"series": "Wine", "method": "hybrid@20", "reward": -0.4}]
    assert rows_to_keep(done, earlier, resuming=True) == done + earlier[1:]
    assert rows_to_keep(done, earlier, resuming=False) == done  # --head-rows-only: another run's rows stay out


def test_curves_only_config_runs_base_sampling_and_the_two_curves():
    labels = [label for label, *_ in real_rows(RealPart(budgets=[20, 200], hybrid_budgets=[20], baselines=False))]
    assert labels == ["base sampling", "maxent_ts@20", "maxent_ts@200", "hybrid@20"]
    assert len(real_rows(RealPart(budgets=[20, 200], hybrid_budgets=[20]))) == len(labels) + 6


def test_anytime_only_config_drops_the_search_sampler_rows_and_needs_the_anytime_curves():
    config = RealPart(budgets=[20, 2000], hybrid_budgets=[20, 200], baselines=False, in_tree=True,
                      search_sampler=False)
    assert [label for label, *_ in real_rows(config)] == ["base sampling"]
    assert [(prefix, budgets) for prefix, _, _, budgets, _ in anytime_curves(config)] == [
        ("maxent_ts", [20, 2000]), ("hybrid", [20, 200])]
    assert reference_label(config) == f"maxent_ts@2000{IN_TREE}"
    with pytest.raises(ValueError, match="search_sampler: false` needs `in_tree: true"):
        RealPart(search_sampler=False)


def test_reward_plot_groups_windows_by_series(tmp_path):
    rows = [{"series": w, "method": m, "curve": c, "budget": b, "reward": -0.5 - 0.01 * i}
            for i, w in enumerate(["A", "A+12", "B"])
            for m, c, b in [("base sampling", "", 0), ("maxent_ts@20", "MC-only", 20),
                            ("maxent_ts@200", "MC-only", 200), ("hybrid@20", "hybrid", 20),
                            (f"hybrid@20{IN_TREE}", f"hybrid{IN_TREE}", 20),
                            (f"maxent_ts@200{IN_TREE}", f"MC-only{IN_TREE}", 200)]]
    plot_curves(rows, tmp_path / "curves.png", np.random.default_rng(0), n_boot=50)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_method_means_average_each_method_over_windows_and_skip_missing_root_errors():
    nan = float("nan")
    cells = [("A", "base sampling", 0.2, -1.0, nan), ("B", "base sampling", 0.4, -0.5, nan),
             ("A", "hybrid@20", 0.1, -0.2, 0.3), ("B", "hybrid@20", 0.3, -0.4, 0.1)]
    rows = [{"series": w, "method": m, "crps": c, "scaled_mae": 1.0, "spec_w1": 0.5, "reward": r, "root_error": e,
             "nfe_tokens": 100.0, "wall_s": 2.0} for w, m, c, r, e in cells]
    lines = method_means(rows).splitlines()
    assert lines[0].startswith("| method (mean of 2 windows) |") and len(lines) == 4
    assert lines[2] == "| base sampling | 0.300 | 1.000 | 0.500 | -0.750 | nan | 100 | 2.0 |"
    assert lines[3] == "| hybrid@20 | 0.200 | 1.000 | 0.500 | -0.300 | 0.200 | 100 | 2.0 |"


def ess_rows(mc: dict[int, list[float]], hybrid: dict[int, list[float]]) -> list[dict]:
    """Anytime rows carrying only the draws' ESS, per budget and window ("A", "B", ...)."""
    return [{"series": w, "method": f"{label}@{b}{RESAMPLED}", "curve": "", "draws_ess": ess[b][i]}
            for label, ess in (("maxent_ts", mc), ("hybrid", hybrid)) for b in ess for i, w in enumerate("AB")]


def test_ess_ratios_are_per_window_geometric_means_of_the_draws_effective_samples():
    config = RealPart(budgets=[20, 200, 2000], hybrid_budgets=[20, 200], bootstrap=200)
    mc = {20: [4.0, 8.0], 200: [20.0, 40.0], 2000: [100.0, 400.0]}
    hybrid = {20: [8.0, 8.0], 200: [80.0, 40.0]}
    out = ess_ratios(ess_rows(mc, hybrid), config, np.random.default_rng(0))
    gain_20, low, high = out["hybrid_vs_mc_equal_budget"][20]
    assert gain_20 == pytest.approx(np.sqrt(2.0 * 1.0), abs=1e-3) and low <= gain_20 <= high  # 8/4, 8/8
    assert out["hybrid_vs_mc_equal_budget"][200][0] == pytest.approx(np.sqrt(4.0 * 1.0), abs=1e-3)
    assert out["hybrid_vs_mc_reference"][200][0] == pytest.approx(np.sqrt(0.8 * 0.1), abs=1e-3)
    assert out["mc_growth"][2000][0] == pytest.approx(np.sqrt(25.0 * 50.0), abs=1e-2)
    assert out["mc_growth"][20] == [1.0, 1.0, 1.0]


def test_is_log_z_errors_are_lambda_times_the_distance_to_the_reference_paired_per_window():
    config = RealPart(budgets=[20, 200, 2000], hybrid_budgets=[20, 200], lam=10.0, bootstrap=200)
    values = {"maxent_ts@20": [0.3, -0.1, 0.2, 0.0], "maxent_ts@200": [0.1, 0.1, -0.1, 0.1],
              "maxent_ts@2000": [0.0, 0.0, 0.0, 0.0], "hybrid@20": [0.1, 0.0, -0.1, 0.2],
              "hybrid@200": [0.05, -0.05, 0.0, 0.0]}
    rows = [{"series": s, "method": f"{m}{RESAMPLED}", "root_value_is": v[i] + 1.0}  # a common offset cancels
            for m, v in values.items() for i, s in enumerate(SERIES)]
    out = is_log_z_errors(rows, config, np.random.default_rng(0))
    assert out["windows"] == 4 and set(out["mc"]) == {20, 200} and set(out["paired"]) == {20, 200}
    assert out["mc"][20][0] == pytest.approx(10 * 0.6 / 4) and out["hybrid"][200][0] == pytest.approx(10 * 0.1 / 4)
    mean, low, high = out["paired"][20]  # hybrid − MC per window: 10·(0.1−0.3, 0−0.1, 0.1−0.2, 0.2−0)
    assert mean == pytest.approx(10 * (-0.2 - 0.1 - 0.1 + 0.2) / 4) and low <= mean <= high
    assert out["paired"][200][0] == pytest.approx(10 * (0.05 + 0.05 + 0.0 + 0.0 - 0.4) / 4)


def test_ess_factor_interpolates_mc_budget_in_log_budget_and_flags_hybrids_beyond_mc():
    config = RealPart(budgets=[20, 200, 2000], hybrid_budgets=[20, 200], bootstrap=200)
    log_mc = np.log([[4.0, 40.0, 400.0]] * 3)  # ESS ∝ budget: log ESS linear in log budget
    log_hybrid = np.log([[8.0, 800.0]] * 3)  # at 20: MC's ESS at 40; at 200: beyond MC@2000
    out = ess_factor(log_mc, log_hybrid, config, np.random.default_rng(0))
    assert out[20]["factor"] == pytest.approx(2.0, abs=0.01) and out[20]["ci"] == [2.0, 2.0]
    assert out[20]["censored"] == 0.0
    assert np.isinf(out[200]["factor"]) and out[200]["censored"] == 1.0


def test_ess_factor_is_at_most_mc_first_budget_over_b_when_the_hybrid_is_below_mc_start():
    config = RealPart(budgets=[20, 200, 2000], hybrid_budgets=[200], bootstrap=50)
    out = ess_factor(np.log([[4.0, 40.0, 400.0]]), np.log([[2.0]]), config, np.random.default_rng(0))
    assert out[200]["factor"] == pytest.approx(0.1)  # clamped to 20 / 200


def test_budget_reaching_uses_the_running_maximum_of_a_noisy_curve():
    # The dip at 200 must not make 1.5 reachable twice: the monotone curve is [1, 2, 2, 3].
    assert budget_reaching([20, 50, 200, 2000], np.array([1.0, 2.0, 1.2, 3.0]), 1.5) == pytest.approx(
        np.exp((np.log(20) + np.log(50)) / 2))
    assert budget_reaching([20, 50], np.array([1.0, 2.0]), 2.5) == float("inf")


def test_ess_plot_is_written_with_an_infinite_upper_interval(tmp_path):
    config = RealPart(budgets=[20, 200, 2000], hybrid_budgets=[20, 200], bootstrap=50)
    rows = ess_rows({20: [4.0, 8.0], 200: [20.0, 40.0], 2000: [100.0, 400.0]}, {20: [8.0, 8.0], 200: [800.0, 40.0]})
    ratios = ess_ratios(rows, config, np.random.default_rng(0))
    assert np.isinf(ratios["factor"][200]["ci"][1])  # window A's hybrid@200 beats MC@2000 in some resamples
    plot_ess(rows, config, ratios["factor"], tmp_path / "ess.png", np.random.default_rng(0))
    assert (tmp_path / "ess.png").stat().st_size > 0
