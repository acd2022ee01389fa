"""Harvest on a tiny model: every field lands, resume skips done prompts, shards merge to one harvest."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from data.buffer import SOURCES, read_buffer
from data.buffer_merge import merge
from data.series import load_builtin
from sadt.codec import Codec
from sadt.config import from_dict
from sadt.lm.backend import TorchLM
from sadt.policy import masked_log_softmax
from search.forecast_task import ForecastTask
from search.harvest import HarvestConfig, harvest, parse_shard, task_set

FINGERPRINT = "tiny-llama-test"


def config(tmp_path, name="h.h5"):
    return from_dict({
        "series": ["Wooly", "Wine"], "context_length": 16, "horizon": 4, "windows_per_series": 2,
        "output": str(tmp_path / name), "search": {"n_rollouts": 4, "batch_size": 4, "n_samples": 3, "lam": 2.0},
    }, HarvestConfig)


@pytest.fixture
def setup(base_tokenizer):
    return TorchLM(tiny_llama()), Codec(base_tokenizer)


def test_harvest_stores_tree_paths_and_samples_with_their_rewards(tmp_path, setup):
    lm, codec = setup
    cfg = config(tmp_path)
    buffer = read_buffer(harvest(lm, codec, cfg, FINGERPRINT), FINGERPRINT)
    tasks = task_set(cfg)
    assert buffer.prompt_keys() == [t.key for t in tasks] and buffer.n_prompts == 4
    a = buffer.arrays
    assert np.sum(a["source"] == SOURCES["tree_sample"]) == 4 * 3
    assert np.all(np.isfinite(a["log_prior"])) and np.all(a["log_prior"] <= 0)
    # Stored rewards equal the task's reward of the stored actions (prompt 0).
    task = tasks[0]
    context = load_builtin(task.series).context[task.end - 16 : task.end]
    forecast = ForecastTask.build(codec, context, 4, cfg.reward)
    rows = np.flatnonzero(a["prompt_index"] == 0)
    sequences = [buffer.trajectory(int(i))["actions"].tolist() for i in rows]
    np.testing.assert_allclose(a["reward"][rows], forecast.reward_fn(sequences))
    assert buffer.meta["lam"] == 2.0 and buffer.meta["action_token_ids"] == codec.action_token_ids


def test_resume_skips_committed_prompts(tmp_path, setup):
    lm, codec = setup
    cfg = config(tmp_path)
    harvest(lm, codec, cfg, FINGERPRINT, shard=(0, 2))  # half the tasks land in another file
    path = harvest(lm, codec, cfg, FINGERPRINT)
    first = read_buffer(path)
    calls = lm.stats.forward_calls
    harvest(lm, codec, cfg, FINGERPRINT)
    assert lm.stats.forward_calls == calls  # nothing searched again
    again = read_buffer(path)
    assert again.prompt_keys() == first.prompt_keys() and again.n_trajectories == first.n_trajectories


def test_three_shards_merge_to_the_single_harvest(tmp_path, setup):
    lm, codec = setup
    cfg = config(tmp_path)
    shards = [harvest(lm, codec, cfg, FINGERPRINT, shard=(i, 3)) for i in range(3)]
    merged = read_buffer(merge(shards, tmp_path / "merged.h5"))
    single = read_buffer(harvest(lm, codec, config(tmp_path, "single.h5"), FINGERPRINT))
    order = np.argsort(merged.arrays["prompt_task_index"])  # shards interleave the task order
    assert [merged.prompt_keys()[i] for i in order] == single.prompt_keys()
    for i, j in enumerate(order):
        m_rows = np.flatnonzero(merged.arrays["prompt_index"] == merged.arrays["prompt_task_index"][j])
        s_rows = np.flatnonzero(single.arrays["prompt_index"] == i)
        for a_row, b_row in zip(m_rows, s_rows, strict=True):
            x, y = merged.trajectory(int(a_row)), single.trajectory(int(b_row))
            for name in x:
                np.testing.assert_array_equal(x[name], y[name])


def test_shard_argument_and_bad_windows_are_clear_errors(tmp_path):
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("1-4")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("4/4")
    with pytest.raises(ValueError, match="too short"):
        task_set(from_dict({"series": ["Wooly"], "context_length": 200}, HarvestConfig))


def step_log_prior(lm, forecast: ForecastTask, sequences: list[list[int]]) -> np.ndarray:
    """log p(a_t|s_t) of every step, flat, from one teacher-forced forward (as the trainer computes it)."""
    action_ids = forecast.codec.action_token_ids
    paths = [[action_ids[a] for a in seq] for seq in sequences]
    _, logits = lm.path_states(lm.prefill(forecast.prompt_ids), paths, action_ids)
    out = []
    for row, seq in enumerate(sequences):
        state = forecast.grammar.initial(1)
        for t, a in enumerate(seq):
            log_p = masked_log_softmax(logits[row, t][None], forecast.grammar.mask(state))
            out.append(float(log_p[0, a]))
            state = forecast.grammar.advance(state, torch.tensor([a]))
    return np.array(out)


def test_prior_sampler_stores_draws_from_p_with_their_step_log_probs(tmp_path, setup):
    lm, codec = setup
    cfg = dataclasses.replace(config(tmp_path), sampler="prior")
    buffer = read_buffer(harvest(lm, codec, cfg, FINGERPRINT), FINGERPRINT)
    a = buffer.arrays
    assert buffer.prompt_keys() == [t.key for t in task_set(cfg)]  # same keys as a tree harvest: same split
    assert np.all(a["source"] == SOURCES["prior_sample"]) and buffer.n_trajectories == 4 * 3
    assert np.all(np.isnan(a["values"])) and np.all(a["visits"] == 0)
    # Each stored step's log p(a_t|s_t) is the prior's, recomputed by one teacher-forced forward.
    task = task_set(cfg)[1]
    context = load_builtin(task.series).context[task.end - 16 : task.end]
    forecast = ForecastTask.build(codec, context, 4, cfg.reward)
    rows = np.flatnonzero(a["prompt_index"] == 1)
    trajectories = [buffer.trajectory(int(i)) for i in rows]
    sequences = [t["actions"].tolist() for t in trajectories]
    np.testing.assert_allclose(np.concatenate([t["log_prior"] for t in trajectories]),
                               step_log_prior(lm, forecast, sequences), atol=1e-4)
    np.testing.assert_allclose(a["reward"][rows], forecast.reward_fn(sequences))


def test_unknown_sampler_is_named(tmp_path):
    with pytest.raises(ValueError, match="sampler"):
        dataclasses.replace(config(tmp_path), sampler="beam")


def test_generated_contexts_harvest_and_resume_without_duplicates(tmp_path, setup):
    """`generated: N` adds N synthetic prompts after the series' windows; a rerun with more of them only
    adds the new ones (series i of the generator does not depend on N), and no prompt is stored twice."""
    from data.generator import generate_one
    from search.harvest import task_context

    lm, codec = setup
    base = {"series": ["Wooly"], "context_length": 16, "horizon": 4, "windows_per_series": 1,
            "generator_seed": 3, "sampler": "prior", "output": str(tmp_path / "g.h5"),
            "search": {"batch_size": 4, "n_samples": 4, "lam": 2.0}}
    small = from_dict({**base, "generated": 2}, HarvestConfig)
    harvest(lm, codec, small, FINGERPRINT)
    large = from_dict({**base, "generated": 4}, HarvestConfig)
    calls = lm.stats.forward_calls
    buffer = read_buffer(harvest(lm, codec, large, FINGERPRINT))
    keys = buffer.prompt_keys()
    assert keys == [t.key for t in task_set(large)] and len(set(keys)) == 5  # 1 window + 4 generated, once each
    assert lm.stats.forward_calls - calls > 0
    generated = [t for t in task_set(large) if t.series.startswith("gen")]
    assert [t.series for t in generated] == ["gen3-0", "gen3-1", "gen3-2", "gen3-3"]
    np.testing.assert_array_equal(task_context(generated[2], large), generate_one(3, 2, 16).values)
    calls = lm.stats.forward_calls
    harvest(lm, codec, large, FINGERPRINT)
    assert lm.stats.forward_calls == calls  # everything committed: nothing to do
    with pytest.raises(ValueError, match="generated"):
        from_dict({**base, "generated": -1}, HarvestConfig)


def policy_log_q(lm, forecast: ForecastTask, head, lam: float, sequences: list[list[int]],
                 temperature: float = 1.0) -> np.ndarray:
    """log q(x) of each sequence under P_F ∝ p^{1/T} exp(λ Q_φ), from one teacher-forced forward."""
    from sadt.policy import proposal_log_probs

    action_ids = forecast.codec.action_token_ids
    paths = [[action_ids[a] for a in seq] for seq in sequences]
    hidden, logits = lm.path_states(lm.prefill(forecast.prompt_ids), paths, action_ids)
    out = []
    for row, seq in enumerate(sequences):
        state, total = forecast.grammar.initial(1), 0.0
        for t, a in enumerate(seq):
            log_p = masked_log_softmax(logits[row, t][None].double(), forecast.grammar.mask(state))
            with torch.no_grad():
                q = head(hidden[row, t][None].float()).double()
            total += float(proposal_log_probs(log_p, q, lam, temperature)[0, a])
            state = forecast.grammar.advance(state, torch.tensor([a]))
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("exploration, temperature", [
    ({"tempered_share": 0.0}, 1.0),
    ({"tempered_share": 1.0, "temperature_low": 2.0, "temperature_high": 2.0}, 2.0),
])
def test_policy_sampler_stores_each_draws_exact_log_q(tmp_path, setup, exploration, temperature):
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead

    lm, codec = setup
    torch.manual_seed(0)
    head = MLPFlowHead(torch.randn(len(codec.action_token_ids), 32), FlowHeadConfig(hidden=8, layers=1))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5 * torch.randn_like(p))  # a head that tilts p (a zero-init head is P_F = p)
    head.eval()
    cfg = from_dict({**dataclasses.asdict(config(tmp_path)), "sampler": "policy", "head": "unused-path",
                     "exploration": exploration}, HarvestConfig)
    buffer = read_buffer(harvest(lm, codec, cfg, FINGERPRINT, head=head), FINGERPRINT)
    a = buffer.arrays
    assert np.all(a["source"] == SOURCES["policy_sample"]) and buffer.n_trajectories == 4 * 3
    task = task_set(cfg)[2]
    context = load_builtin(task.series).context[task.end - 16 : task.end]
    forecast = ForecastTask.build(codec, context, 4, cfg.reward)
    rows = np.flatnonzero(buffer.prompt_rows == 2)
    sequences = [buffer.trajectory(int(i))["actions"].tolist() for i in rows]
    np.testing.assert_allclose(a["log_q"][rows], policy_log_q(lm, forecast, head, 2.0, sequences, temperature),
                               atol=1e-5)  # the head computes Q_φ in float32
    prior = np.array([buffer.trajectory(int(i))["log_prior"].sum() for i in rows])
    assert not np.allclose(a["log_q"][rows], prior)  # the tilt (and temperature) moved q off p


def test_policy_exploration_draws_from_p_with_its_log_q(tmp_path, setup):
    lm, codec = setup
    cfg = from_dict({**dataclasses.asdict(config(tmp_path)), "sampler": "policy", "head": "unused-path",
                     "exploration": {"tempered_share": 0.0, "prior_share": 1.0}}, HarvestConfig)
    buffer = read_buffer(harvest(lm, codec, cfg, FINGERPRINT, head=lambda hidden: 1 / 0), FINGERPRINT)
    prior = np.array([buffer.trajectory(i)["log_prior"].sum() for i in range(buffer.n_trajectories)])
    np.testing.assert_allclose(buffer.arrays["log_q"], prior, atol=1e-4)  # q = p (steps stored in float32)


def test_exploration_and_policy_settings_are_checked():
    with pytest.raises(ValueError, match="`head` is read by, and only by, `sampler: policy`"):
        HarvestConfig(sampler="policy")
    with pytest.raises(ValueError, match="`tempered_share` must be in"):
        from_dict({"exploration": {"tempered_share": 1.5}}, HarvestConfig)
    with pytest.raises(ValueError, match="temperature_low <= temperature_high"):
        from_dict({"exploration": {"temperature_low": 2.0, "temperature_high": 1.0}}, HarvestConfig)


def test_a_hybrid_tree_harvest_reads_the_head_and_refuses_to_run_without_one(tmp_path, setup):
    """The aggregated-search rounds (issue 36) harvest hybrid trees that read the last head."""
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead

    class ReadHead(MLPFlowHead):
        def forward(self, hidden):
            raise RuntimeError("the search read the head")

    lm, codec = setup
    hybrid = {**dataclasses.asdict(config(tmp_path)), "search": {"n_rollouts": 4, "batch_size": 4, "n_samples": 3,
                                                                 "lam": 2.0, "hybrid": "visits"}}
    with pytest.raises(ValueError, match=r"`head` is read by, and only by, .* reads one \(the hybrid\)"):
        from_dict(hybrid, HarvestConfig)
    cfg = from_dict({**hybrid, "head": "unused-path"}, HarvestConfig)
    head = ReadHead(torch.randn(len(codec.action_token_ids), 32), FlowHeadConfig(hidden=8, layers=1))
    with pytest.raises(RuntimeError, match="the search read the head"):
        harvest(lm, codec, cfg, FINGERPRINT, head=head)
    with pytest.raises(ValueError, match="method 'smc' grows none"):
        from_dict({**dataclasses.asdict(config(tmp_path)), "search": {"method": "smc"}}, HarvestConfig)
