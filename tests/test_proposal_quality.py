"""The proposal benchmark's windows sit between the head's training windows, and its paired scores are
the differences from p on the same windows."""


import numpy as np
import pytest

from benchmarks.evaluation.head_choice import PRIOR, choice_summary, choose_head, paired_scores, summary
from benchmarks.proposal_quality import ProposalConfig, plot, proposals, validation_windows
from data.series import load_builtin
from search.harvest import HarvestConfig, task_set


def test_validation_windows_end_strictly_between_the_harvest_windows():
    config = ProposalConfig(windows_per_series=3, harvest_windows_per_series=8)
    harvest = HarvestConfig(series=["Wine"], windows_per_series=8, context_length=48, horizon=12)
    harvested = sorted(t.end for t in task_set(harvest))
    history = load_builtin("Wine").context
    windows = validation_windows("Wine", config)
    assert len(windows) == 3
    for label, context in windows:
        end = int(label.split("@")[1])
        assert end not in harvested
        assert any(a < end < b for a, b in zip(harvested, harvested[1:], strict=False))
        np.testing.assert_array_equal(context, history[end - 48 : end])


def test_proposals_always_include_the_prior_and_bad_config_is_named():
    labels = [label for label, _, _ in proposals(ProposalConfig(guide_scales=[0.5], look_ahead_reward=False))]
    assert labels == [PRIOR, "P_F head s=0.5"]
    config = ProposalConfig(guide_scales=[0.25, 1.0], other_heads={"fkl": "somewhere"}, look_ahead_reward=False)
    assert [(label, head) for label, head, _ in proposals(config)] == [
        (PRIOR, None), ("P_F head s=0.25", "head"), ("P_F head s=1", "head"),
        ("P_F fkl s=0.25", "fkl"), ("P_F fkl s=1", "fkl")]
    with pytest.raises(ValueError, match="guide_scales"):
        ProposalConfig(guide_scales=[0.0])
    with pytest.raises(ValueError, match="windows"):
        ProposalConfig(windows="test")


def synthetic_rows() -> list[dict]:
    rows = []
    for i, window in enumerate(["A@1", "B@2", "C@3"]):
        for name, shift in ((PRIOR, 0.0), ("P_F head s=1", 0.1 * (i + 1))):
            rows.append({"series": window, "proposal": name, "ess_fraction": 0.3 + shift,
                         "kl_target_proposal": 1.0 - shift, "kl_proposal_target": 1.0 + shift,
                         "proposal_reward": -1.0 + shift, "value_is": -0.7})
    return rows


def test_paired_scores_are_the_mean_difference_from_p_with_an_interval_around_it(tmp_path):
    scores = {s["proposal"]: s for s in paired_scores(synthetic_rows(), 500, np.random.default_rng(0))}
    head, prior = scores["P_F head s=1"], scores[PRIOR]
    assert head["windows"] == 3
    assert head["ess_fraction_vs_p"] == pytest.approx(0.2)
    assert head["kl_target_proposal_vs_p"] == pytest.approx(-0.2)
    assert prior["ess_fraction_vs_p"] == 0.0
    low, high = head["ess_fraction_vs_p_ci"]
    assert 0.1 - 1e-9 <= low <= 0.2 <= high <= 0.3 + 1e-9  # the bootstrap means of 0.1, 0.2, 0.3
    # ESS ratios 0.4/0.3, 0.5/0.3, 0.6/0.3: their geometric mean, and exactly 1 for p against itself.
    assert head["ess_gain"] == pytest.approx((4 / 3 * 5 / 3 * 2) ** (1 / 3)) and prior["ess_gain"] == pytest.approx(1.0)
    assert 4 / 3 - 1e-9 <= head["ess_gain_ci"][0] <= head["ess_gain"] <= head["ess_gain_ci"][1] <= 2 + 1e-9
    text = summary(list(scores.values()), "# header")
    assert "| − p, same windows | | +0.200 [" in text
    plot(synthetic_rows(), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def duel_rows(ratios: dict[str, list[float]]) -> list[dict]:
    """ESS fractions per window: the incumbent 0.1 everywhere, each challenger 0.1 × its ratios."""
    rows = []
    for w in range(len(next(iter(ratios.values())))):
        rows.append({"series": f"W@{w}", "proposal": PRIOR, "ess_fraction": 0.05})
        rows.append({"series": f"W@{w}", "proposal": "inc", "ess_fraction": 0.1})
        rows += [{"series": f"W@{w}", "proposal": name, "ess_fraction": 0.1 * r[w]} for name, r in ratios.items()]
    return rows


def test_a_challenger_replaces_the_incumbent_only_when_its_paired_interval_lies_above_one():
    rng = np.random.default_rng(0)
    # "noisy" has the higher geometric mean (1.37) but loses on two windows of six: not separable.
    noisy, steady = [3.0, 3.0, 3.0, 0.5, 0.5, 1.0], [1.2, 1.3, 1.1, 1.25, 1.15, 1.2]
    choice, duels = choose_head(duel_rows({"noisy": noisy, "steady": steady}), "inc", 2000, rng)
    assert choice == "steady"
    by = {d["proposal"]: d for d in duels}
    assert set(by) == {"noisy", "steady"}  # p and the incumbent are not challengers
    assert by["noisy"]["ratio"] == pytest.approx(np.exp(np.log(noisy).mean()))
    assert by["noisy"]["ci"][0] < 1 < by["noisy"]["ratio"] and by["noisy"]["above"] == 3
    assert by["steady"]["ci"][0] > 1 and by["steady"]["above"] == 6
    choice, duels = choose_head(duel_rows({"noisy": noisy}), "inc", 2000, rng)
    assert choice == "inc"
    assert "Chosen: **inc**" in choice_summary(choice, duels, "inc")
    with pytest.raises(ValueError, match="'P_F soft s=1' is not a proposal"):
        choose_head(duel_rows({"noisy": noisy}), "P_F soft s=1", 10, rng)


def test_heldout_windows_are_the_amortisation_benchmarks():
    from benchmarks.evaluation.amortisation_real import RealPart, heldout_windows
    from benchmarks.proposal_quality import windows_of

    config = ProposalConfig(windows="heldout", series=["Wine", "Wooly"], windows_per_series=3)
    expected = [w for name in config.series for w in heldout_windows(name, RealPart(windows_per_series=3))]
    got = windows_of(config)
    assert [label for label, _ in got] == [label for label, _, _ in expected]
    for (_, context), (_, want, _) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(context, want)


def test_generated_windows_lie_past_every_harvested_context():
    from benchmarks.proposal_quality import windows_of
    from data.generator import generate_one

    config = ProposalConfig(windows="generated", generated_windows=4, generated_first=30, context_length=48)
    windows = windows_of(config)
    assert [label for label, _ in windows] == ["gen0-30", "gen0-31", "gen0-32", "gen0-33"]
    np.testing.assert_array_equal(windows[1][1], generate_one(0, 31, 48).values)
    harvested = {t.series for t in task_set(HarvestConfig(series=[], generated=30, generator_seed=0))}
    assert harvested and not harvested & {label for label, _ in windows}
    with pytest.raises(ValueError, match="generated_windows"):
        ProposalConfig(windows="generated", generated_windows=0)


def test_parameter_free_values_run_as_proposals_on_the_base_model(tmp_path):
    from benchmarks.proposal_quality import run

    config = ProposalConfig(series=["Wine"], windows_per_series=1, head="look_ahead_reward",
                            other_heads={"digit": "digit_ahead_reward"}, n_draws=2, batch_size=2,
                            guide_scales=[1.0], look_ahead_reward=False)
    rows = run(config, tmp_path, keep=[])
    assert [r["proposal"] for r in rows] == [PRIOR, "P_F head s=1", "P_F digit s=1"]
    assert all(np.isfinite(r["ess_fraction"]) and r["n_draws"] == 2 for r in rows)


def test_an_unknown_incumbent_is_named_before_anything_is_written(tmp_path, capsys):
    from benchmarks.proposal_quality import main

    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nhead: null\nother_heads: {{soft32: somewhere}}\n"
                      "guide_scales: [1.0]\nlook_ahead_reward: false\nincumbent: P_F soft s=1\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config)])
    assert "`incumbent` 'P_F soft s=1' is none of the proposals" in capsys.readouterr().err
    assert not out.exists()
