"""The partial reward R(s) of unfinished forecasts and the parameter-free value Q(s, a) = R(s·a)."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from data.series import load_builtin
from sadt.codec import SEP, Codec
from sadt.lm.backend import TorchLM
from search.forecast_task import ForecastTask
from search.tree_search import SearchConfig


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
    q = value(torch.zeros(len(sequences), 8), sequences)
    n_actions = len(task.codec.action_token_ids)
    expected = [[task.partial_reward([s + [a]])[0] for a in range(n_actions)] for s in sequences]
    np.testing.assert_allclose(q.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["maxent_ts", "twisted_smc"])
def test_the_hybrid_and_twisted_smc_run_with_the_partial_reward_value(task, method):
    hybrid = {"hybrid": "visits", "hybrid_offset": True, "sampling": "search"} if method == "maxent_ts" else {}
    config = SearchConfig(method=method, lam=2.0, n_rollouts=8, batch_size=4, n_samples=4, progress=False, **hybrid)
    result = task.search(TorchLM(tiny_llama()), config, "partial_reward")
    assert len(result.samples) == 4 and np.isfinite(result.root_value)
    np.testing.assert_allclose(result.sample_rewards, task.reward_fn(result.samples))


def test_an_unknown_value_name_is_an_error_naming_it(task):
    with pytest.raises(ValueError, match="'partial_rewards'"):
        task.value("partial_rewards")
