"""The partial reward R(s) of unfinished forecasts and the parameter-free value Q(s, a) = R(s·a)."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from data.series import load_builtin
from sadt.codec import SEP, Codec
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.head_card import migrate_value_flags
from sadt.lm.backend import TorchLM
from sadt.partial_reward import completed_values, digit_ahead_q, digits_written, nearest_completion, shaping_value
from search.config import search_config
from search.forecast_task import ForecastTask


@pytest.fixture
def task(base_tokenizer):
    return ForecastTask.build(Codec(base_tokenizer), load_builtin("AirPassengers").context[-16:], 4)


def test_task_partial_reward_counts_only_completed_values(task):
    one_value, mid_second = [1, 2, SEP], [1, 2, SEP, 3]
    full = [1, 2, SEP, 3, SEP, 4, 5, SEP, 6, SEP]
    r_one, r_mid, r_full = task.partial_reward([one_value, mid_second, full])
    assert r_one == r_mid  # an unfinished value does not count yet
    assert r_full == pytest.approx(task.reward_fn([full])[0])
    assert r_one == pytest.approx(task.reward.partial([[0.012]])[0])


def test_partial_reward_value_is_the_partial_reward_of_each_next_state(task):
    value = task.value("partial_reward")
    sequences = [[], [1, 2], [1, 2, SEP, 3], [1, SEP, 2, SEP, 3, SEP, 4]]
    q = value(torch.zeros(len(sequences), 8), lambda: sequences)
    n_actions = len(task.codec.action_token_ids)
    expected = [[task.partial_reward([s + [a]])[0] for a in range(n_actions)] for s in sequences]
    np.testing.assert_allclose(q.numpy(), expected, rtol=0, atol=1e-12)


def test_shaping_value_gives_each_next_states_share_of_the_horizon_completed(task):
    sequences = [[], [1, 2], [1, 2, SEP, 3], [1, SEP, 2, SEP, 3, SEP, 4]]  # horizon 4: 0, 0, 1, 3 values done
    r, share = shaping_value(task.codec, task.reward, sequences, "partial")
    expected = np.repeat(np.array([0, 0, 1, 3])[:, None] / 4, r.shape[1], axis=1)
    expected[1:, SEP] += 0.25  # the separator completes one more value (at the empty state, none: no digits yet)
    np.testing.assert_array_equal(share, expected)
    np.testing.assert_array_equal(r, task.value("partial_reward")(torch.zeros(4, 8), lambda: sequences).numpy())


@pytest.mark.parametrize("share, weight", [(0.0, 1.5), (0.2, 1.5), (0.25, -2.0), (0.74, 0.5), (0.75, 3.0),
                                           (1.0, 7.0)])
def test_a_learned_reward_weight_is_read_from_the_bin_of_the_share_completed(share, weight):
    head = MLPFlowHead(torch.randn(12, 8), FlowHeadConfig(hidden=4, value_form="digit_ahead", reward_weight_bins=4))
    r = torch.tensor([0.3, -1.2])
    torch.testing.assert_close(head.weigh_reward(r, torch.full((2,), share)), r)  # β starts at 1
    with torch.no_grad():
        head.reward_weight.copy_(torch.tensor([1.5, -2.0, 0.5, 3.0, 7.0]))  # bins [0, ¼) [¼, ½) [½, ¾) [¾, 1) {1}
    torch.testing.assert_close(head.weigh_reward(r, torch.full((2,), share)), weight * r)


def test_a_per_position_reward_weight_is_read_from_the_bin_and_the_digits_written():
    head = MLPFlowHead(torch.randn(12, 8), FlowHeadConfig(hidden=4, value_form="digit_ahead", reward_weight_bins=2,
                                                          reward_weight_positions=3))
    with torch.no_grad():
        head.reward_weight.copy_(torch.arange(9.0).reshape(3, 3))  # β[bin, position] = 3·bin + position
    r = torch.ones(2, 2)
    share, position = torch.tensor([[0.0, 0.5], [1.0, 0.4]]), torch.tensor([[0], [5]])  # 5: clamped to column 2
    torch.testing.assert_close(head.weigh_reward(r, share, position), torch.tensor([[0.0, 3.0], [8.0, 2.0]]))
    with pytest.raises(ValueError, match="pass `position`"):
        head.weigh_reward(r, share)
    with pytest.raises(ValueError, match="needs `reward_weight_bins`"):
        FlowHeadConfig(value_form="digit_ahead", reward_weight_positions=3)


def test_digits_written_counts_the_unfinished_value_only(task):
    sequences = [[], [1], [1, 2], [1, SEP], [1, 2, SEP, 3], [1, SEP, 2, 0, 4]]
    assert digits_written(task.codec, sequences).tolist() == [0, 1, 2, 0, 1, 3]


@pytest.mark.parametrize("options", [{"reward_weight_bins": 4}, {"residual": False}])
def test_a_reward_weight_or_no_residual_without_a_value_form_is_an_error(options):
    with pytest.raises(ValueError, match="need a `value_form`"):
        FlowHeadConfig(**options)


def test_look_ahead_value_is_the_look_ahead_reward_of_each_next_state(task):
    sequences = [[], [1, 2, SEP, 3], [1, SEP, 2, SEP, 3, SEP, 4]]
    q = task.value("look_ahead_reward")(torch.zeros(len(sequences), 8), lambda: sequences)
    expected = [[task.reward.ahead([completed_values(task.codec, s + [a])])[0] for a in range(q.shape[1])]
                for s in sequences]
    np.testing.assert_allclose(q.numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(q.numpy(), task.value("partial_reward")(torch.zeros(3, 8), lambda: sequences).numpy())


@pytest.mark.parametrize("method", ["maxent_ts", "twisted_smc"])
def test_the_hybrid_and_twisted_smc_run_with_the_partial_reward_value(task, method):
    hybrid = {"hybrid": "visits", "hybrid_offset": True, "sampling": "search"} if method == "maxent_ts" else {}
    config = search_config(method=method, lam=2.0, n_rollouts=8, batch_size=4, n_samples=4, progress=False, **hybrid)
    result = task.search(TorchLM(tiny_llama()), config, "partial_reward")
    assert len(result.samples) == 4 and np.isfinite(result.root_value)
    np.testing.assert_allclose(result.sample_rewards, task.reward_fn(result.samples))


def test_an_unknown_value_name_is_an_error_naming_it(task):
    with pytest.raises(ValueError, match="'partial_rewards'"):
        task.value("partial_rewards")


def test_a_head_without_the_residual_is_beta_r_plus_a_per_action_bias():
    config = FlowHeadConfig(value_form="digit_ahead", reward_weight_bins=2, residual=False)
    head = MLPFlowHead(torch.randn(12, 8), config)
    assert not any(name.startswith("q_mlp") for name, _ in head.named_parameters())
    with torch.no_grad():
        head.q_bias.copy_(torch.arange(12.0))
    hidden = torch.randn(3, 5, 8)
    torch.testing.assert_close(head.q(hidden), torch.arange(12.0).expand(3, 5, 12))  # reads no LM state
    with pytest.raises(ValueError, match="need a `value_form`"):
        FlowHeadConfig(residual=False)


def spellings_from(prefix: str, max_digits: int) -> list[int]:
    """Every value the grammar can write that starts with `prefix`, by brute force."""
    return [v for v in range(10**max_digits) if str(v).startswith(prefix)]


@pytest.mark.parametrize("prefix, target", [("4", 452), ("45", 452), ("5", 452), ("9", 452), ("1", 950),
                                            ("1", 9), ("0", 5), ("123", 5000), ("7777", 12)])
def test_nearest_completion_is_the_closest_value_written_with_the_prefix(prefix, target):
    best = min(abs(v - target) for v in spellings_from(prefix, 4))
    assert abs(nearest_completion(prefix, target, 4) - target) == best
    assert str(nearest_completion(prefix, target, 4)).startswith(prefix)


def test_digit_ahead_scores_each_digit_by_its_nearest_completion_and_sep_as_the_look_ahead(task):
    sequences = [[], [1], [1, 2, SEP, 3], [1, SEP, 0], [1, SEP, 2, SEP, 3, SEP, 4, 5]]
    r, share = digit_ahead_q(task.codec, task.reward, sequences)
    scale, sep = 10**task.codec.config.precision, task.codec.config.separator
    look_ahead = task.value("look_ahead_reward")(torch.zeros(len(sequences), 8), lambda: sequences).numpy()
    for row, s in enumerate(sequences):
        done = completed_values(task.codec, s)
        unfinished = task.codec.actions_to_text(np.array(s, dtype=np.int64)).rpartition(sep)[2]
        series = np.concatenate([task.reward.context, done])
        target = round(series[series.size - task.reward.season] * scale)
        for digit in range(SEP):
            spellings = spellings_from(unfinished + str(digit), task.codec.config.max_digits)
            if unfinished == "0" or not spellings:  # a digit the grammar forbids: R⁺(s)
                assert r[row, digit] == pytest.approx(task.reward.ahead([done])[0], abs=1e-12)
                continue
            nearest = min(spellings, key=lambda v: abs(v - target))
            expected = task.reward.ahead([np.append(done, nearest / scale)])[0]
            assert r[row, digit] == pytest.approx(expected, abs=1e-12), (s, digit)
            assert share[row, digit] == (done.size + 1) / 4
        np.testing.assert_allclose(r[row, SEP:], look_ahead[row, SEP:], rtol=0, atol=1e-12)  # SEP and END as R⁺


def test_digit_ahead_along_the_seasonal_guess_keeps_the_look_ahead_reward(task):
    """Writing y_k, the value R⁺ fills in at position k, digit by digit commits to y_k all along: R⁺ᵈ = R⁺(s·y_k),
    which is R⁺(s) up to y_k's rounding to the codec's precision."""
    done = [1, 2, SEP]
    values = completed_values(task.codec, done)
    series = np.concatenate([task.reward.context, values])
    target = str(round(series[series.size - task.reward.season] * 10**task.codec.config.precision))
    states = [done + [int(c) for c in target[:i]] for i in range(len(target))]
    r, _ = digit_ahead_q(task.codec, task.reward, states)
    along = [r[i, int(target[i])] for i in range(len(target))]
    guessed = np.append(values, int(target) / 10**task.codec.config.precision)
    np.testing.assert_allclose(along, task.reward.ahead([guessed])[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(along, task.reward.ahead([values])[0], rtol=0, atol=5e-3)
    assert not np.allclose(r[0, :SEP], r[0, int(target[0])])  # other leading digits commit to other values


def test_soft_ahead_value_scores_digit_ahead_completions_softly_at_the_searchs_lam(task):
    sequences = [[], [1], [1, 2, SEP, 3]]
    hidden = torch.zeros(len(sequences), 8)
    with pytest.raises(ValueError, match="pass the search's `lam`"):
        task.value("soft_ahead_reward")
    q = task.value("soft_ahead_reward", lam=15.0)(hidden, lambda: sequences).numpy()
    soft, share = digit_ahead_q(task.codec, task.reward, sequences, soft_lam=15.0)
    _, digit_share = digit_ahead_q(task.codec, task.reward, sequences)
    np.testing.assert_array_equal(q, soft)
    np.testing.assert_array_equal(share, digit_share)
    # SEP finishes the value being written: its window is s·SEP's completed values, scored by soft_ahead.
    finished = completed_values(task.codec, [1, 2, SEP, 3, SEP])
    assert q[2, SEP] == pytest.approx(task.reward.soft_ahead([finished], 15.0)[0], abs=1e-12)
    assert not np.allclose(q, digit_ahead_q(task.codec, task.reward, sequences)[0])
    with pytest.raises(ValueError, match="needs λ > 0"):
        shaping_value(task.codec, task.reward, sequences, "soft_ahead")


def test_a_value_form_is_one_named_choice_and_old_sidecars_migrate():
    with pytest.raises(ValueError, match="must be one of"):
        FlowHeadConfig(value_form="look-ahead")
    with pytest.raises(ValueError, match="need a `value_form`"):
        FlowHeadConfig(reward_weight_bins=4)
    # Heads written before the one choice kept a chain of flags; each later one refined the one before.
    old = {"hidden": 8, "partial_reward": True, "look_ahead": True, "digit_ahead": True, "soft_ahead": False}
    assert migrate_value_flags(old) == {"hidden": 8, "value_form": "digit_ahead"}
    assert migrate_value_flags({"partial_reward": False, "look_ahead": False})["value_form"] == "none"
    for old_flag in ("partial_reward", "look_ahead"):  # heads on R and R⁺ were dropped: say so, and where they live
        with pytest.raises(ValueError, match="was dropped.*commit ca14b55"):
            FlowHeadConfig(**migrate_value_flags({old_flag: True}))
