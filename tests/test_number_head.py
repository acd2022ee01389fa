"""Issue 36.2: a head whose residual reads the forecast's numbers (the context, the values written, the value
being written) instead of the LM's states: exact inputs, the GRU's batched states against a naive loop, the same
Q at search time as in training, and a fit then a search end to end on the base model."""

import numpy as np
import pytest
import torch

from sadt.codec import SEP
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.number_inputs import number_inputs, walk

CONFIG = FlowHeadConfig(hidden=8, value_form="soft_ahead", reward_weight_bins=4, residual_inputs="numbers",
                        number_width=6)


def random_head(n_actions: int = 12, width: int = 10) -> MLPFlowHead:
    torch.manual_seed(0)
    head = MLPFlowHead(torch.randn(n_actions, width), CONFIG)
    for p in head.parameters():  # the output layer starts at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.5)
    return head


def test_the_walk_gives_every_states_counts_and_digits_exactly():
    values, rows = walk([1, 2, SEP, 3, SEP, 4], max_digits=4, horizon=3, precision=3)
    assert values == [0.012, 0.003]
    np.testing.assert_allclose(rows, [  # values done, leading digits, digits / 4, k / H for s_0..s_6
        [0, 0.0, 0.0, 0], [0, 0.1, 0.25, 0], [0, 0.12, 0.5, 0], [1, 0.0, 0.0, 1 / 3], [1, 0.3, 0.25, 1 / 3],
        [2, 0.0, 0.0, 2 / 3], [2, 0.4, 0.25, 2 / 3]])


def test_the_gru_states_of_a_batch_equal_a_naive_run_per_state():
    head, rng = random_head(), np.random.default_rng(0)
    contexts = [rng.random(9), rng.random(7)]
    paths = [[1, SEP, 2, 3, SEP, 4, SEP], [5, 6], [SEP, 7, SEP, 8]]
    rows_context = [contexts[0], contexts[1], contexts[0]]  # rows 0 and 2 share a prompt
    inputs = number_inputs(rows_context, paths, max_digits=4, horizon=4, precision=3, steps=7)
    assert inputs.context[0] is inputs.context[2]  # one standardised context per prompt
    states = head.number_states(inputs)
    for b, (context, path) in enumerate(zip(rows_context, paths)):
        scale = context.std()
        for t in range(7):
            written, _ = walk(path[:t], 4, 4, 3)
            sequence = np.concatenate([context, written])
            z = torch.tensor((sequence - context.mean()) / scale, dtype=torch.float32).view(1, -1, 1)
            expected = head.number_gru(z)[1][0, 0]
            torch.testing.assert_close(states[b, t], expected, atol=1e-5, rtol=1e-5)


def test_search_time_q_of_a_state_equals_the_training_q_at_that_step():
    head, context = random_head(), np.random.default_rng(1).random(12)
    path = [1, 2, SEP, 3, SEP, 4, 5]
    along = head.number_q(number_inputs([context], [path], 4, 4, 3, steps=len(path)))[0]  # (T, A)
    for t in range(len(path)):
        at = head.number_q(number_inputs([context], [path[:t]], 4, 4, 3))[0, 0]
        torch.testing.assert_close(at, along[t], atol=1e-5, rtol=1e-5)


def test_a_numbers_head_needs_a_value_form_and_refuses_the_lm_state_call():
    with pytest.raises(ValueError, match="needs a `value_form`"):
        FlowHeadConfig(residual_inputs="numbers")
    with pytest.raises(ValueError, match="'lm_states' or 'numbers'"):
        FlowHeadConfig(value_form="soft_ahead", residual_inputs="digits")
    with pytest.raises(RuntimeError, match="number_q"):
        random_head().q(torch.zeros(2, 10))


@pytest.mark.base_model
def test_a_numbers_head_fits_saves_loads_and_guides_a_search(tmp_path, base_tokenizer):
    from data.buffer import read_buffer
    from sadt.codec import Codec
    from sadt.config import from_dict
    from sadt.head_io import load_search_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from sadt.partial_reward import ShapedValue
    from search.config import search_config
    from search.forecast_task import ForecastTask
    from search.harvest import HarvestConfig, harvest
    from trainers import fit

    config = from_dict({"series": ["Wooly"], "context_length": 16, "horizon": 4, "windows_per_series": 2,
                        "output": str(tmp_path / "h.h5"), "sampler": "prior",
                        "search": {"n_samples": 6, "batch_size": 6, "lam": 2.0}}, HarvestConfig)
    lm, tokenizer = load_base_lm()
    buffer = harvest(lm, Codec(tokenizer), config, lm_fingerprint())
    model = fit.main(["--model.lam", "2.0", "--model.save_to", str(tmp_path / "head"), "--data.buffers", f"[{buffer}]",
                      "--data.batch_size", "6", "--data.val_fraction", "0", "--trainer.accelerator", "cpu",
                      "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                      "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                      "--trainer.max_steps", "3", "--model.losses.tb", "0", "--model.losses.forward_kl", "1",
                      "--model.head.value_form", "soft_ahead", "--model.head.residual_inputs", "numbers",
                      "--model.head.hidden", "8", "--model.head.number_width", "6"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.number_gru.parameters())
    head = load_search_head(tmp_path / "head", lm_fingerprint(), read_buffer(buffer).meta["config"]["codec"])
    assert head.card.head_config["residual_inputs"] == "numbers"
    task = ForecastTask.build(Codec(tokenizer), np.linspace(1, 3, 16), 4)
    assert isinstance(task.value(head, 2.0), ShapedValue)
    search = search_config(method="twisted_smc", lam=2.0, n_rollouts=6, batch_size=6, n_samples=3, progress=False)
    result = task.search(lm, search, head)
    assert len(result.samples) == 3 and np.isfinite(result.log_Z)
