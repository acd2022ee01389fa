"""The MLX ports against torch on the same weights, and the search's exactness on the MLX backend.

Tolerances: both sides run float32 (MLX on CPU has no float64 matmul for these layers), so
differences are accumulation-order rounding: ~5e-7 on the 2-layer tiny Llama (we allow 1e-5) and
~1e-4 on SmolLM2's 30 layers with logits of magnitude ~30 (relative 3e-6; we allow 1e-3 on the
log-probs).
"""

import sys

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from toy_problem import ACTION_IDS, Toy, total_variation, tree_distribution

if sys.platform not in ("linux", "darwin"):
    pytest.skip(f"mlx publishes no wheels for {sys.platform}", allow_module_level=True)

from sadt.flow_head import FlowHeadConfig, MLPFlowHead  # noqa: E402
from sadt.head_card import HeadCard  # noqa: E402
from sadt.head_io import HeadMismatchError, save_head  # noqa: E402
from sadt.lm.backend import TorchLM  # noqa: E402
from sadt.mlx.backend import MLXLM  # noqa: E402  (installed by the `mlx` extra, which `make test` installs)
from sadt.mlx.flow_head import MLXFlowHead  # noqa: E402
from sadt.policy import masked_log_softmax  # noqa: E402
from search.config import search_config  # noqa: E402
from search.tree import ROOT  # noqa: E402
from search.tree_search import TreeSearch  # noqa: E402


def as_mlx(model, directory) -> MLXLM:
    """The same weights through mlx-lm, via a float32 Hugging Face folder."""
    model.to(torch.float32).save_pretrained(directory)
    return MLXLM.from_pretrained(directory)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    model = tiny_llama(seed=1).to(torch.float32)
    return TorchLM(model), as_mlx(model, tmp_path_factory.mktemp("tiny"))


def test_prompt_extend_step_and_select_match_torch(pair):
    torch_lm, mlx_lm = pair
    actions = [3, 5, 7, 9]
    prompts = torch_lm.prefill([1, 9, 4, 2]), mlx_lm.prefill([1, 9, 4, 2])
    torch.testing.assert_close(prompts[1].hidden, prompts[0].hidden, atol=1e-5, rtol=0)
    prefixes = [[], [3], [5, 7, 9], [11, 3]]  # ragged, one empty
    batches = [lm.extend(p, prefixes, actions) for lm, p in zip(pair, prompts)]
    for tokens, keep in (([3, 5, 7, 9], None), ([9, 9, 3, 5], torch.tensor([2, 2, 0])), ([7, 3, 3], None)):
        if keep is not None:  # repeated rows, as SMC's resampling makes
            batches = [lm.select(b, keep) for lm, b in zip(pair, batches)]
        batches = [lm.step(b, torch.tensor(tokens[: b.size])) for lm, b in zip(pair, batches)]
        torch.testing.assert_close(batches[1].logits, batches[0].logits.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(batches[1].hidden, batches[0].hidden.float(), atol=1e-5, rtol=0)
    assert torch.equal(batches[1].rows, batches[0].rows)
    assert mlx_lm.stats.tokens == torch_lm.stats.tokens and mlx_lm.stats.forward_calls == torch_lm.stats.forward_calls


def test_path_states_match_torch(pair):
    paths = [[3, 5, 7], [9], []]
    outs = [lm.path_states(lm.prefill([2, 8]), paths, [3, 5, 7, 9]) for lm in pair]
    for i, path in enumerate(paths):  # real states only: rows past a path's end are padding
        n = len(path) + 1
        torch.testing.assert_close(outs[1][0][i, :n], outs[0][0][i, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(outs[1][1][i, :n], outs[0][1][i, :n], atol=1e-5, rtol=0)


def test_flow_head_loads_the_trainers_checkpoint_and_matches(tmp_path, pair):
    torch_head = MLPFlowHead(torch.randn(4, 32), FlowHeadConfig(hidden=16, layers=2))
    with torch.no_grad():
        for p in torch_head.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the zero-init outputs would make Q trivially equal
    save_head(torch_head, tmp_path, HeadCard.for_head(torch_head, lm_fingerprint="tiny", lam=2.0))
    mlx_head, card = MLXFlowHead.load(tmp_path, "tiny")
    hidden = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlx_head(hidden), torch_head.q(hidden), atol=1e-5, rtol=1e-5)
        import mlx.core as mx

        log_z = torch.from_numpy(np.array(mlx_head.log_z(mx.array(hidden.numpy()))))
        torch.testing.assert_close(log_z, torch_head.log_z(hidden), atol=1e-5, rtol=1e-5)
    assert card.lam == 2.0
    with pytest.raises(HeadMismatchError, match="head trained for LM 'tiny'"):
        MLXFlowHead.load(tmp_path, "another")


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """The enumerable toy (exact π* from its float64 torch LM) and its LM in MLX."""
    toy = Toy()
    model = tiny_llama(0)
    model.load_state_dict(toy.lm.model.state_dict())
    return toy, as_mlx(model, tmp_path_factory.mktemp("toy"))


def fixed_tree(lm, toy, sequences, lam=2.0) -> TreeSearch:
    """A tree holding exactly `sequences`, priors from `lm`, soft values backed up by the shared code."""
    search = TreeSearch(lm, toy.problem, search_config(lam=lam, progress=False))
    _, logits = lm.path_states(search.prompt, [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
    log_priors = masked_log_softmax(logits.double().flatten(0, 1), torch.ones(1, 3, dtype=torch.bool))
    log_priors = log_priors.reshape(len(sequences), -1, 3).numpy()  # (S, L+1, A)
    terminals = []
    for s, log_prior in zip(sequences, log_priors):
        node, t = ROOT, 0
        while search.tree.children[node, s[t]] >= 0:  # shared prefix already in the tree
            node, t = int(search.tree.children[node, s[t]]), t + 1
        terminals.append(search._insert(node, s[t:], log_prior[t + 1 :], None, None, float(toy.reward([s])[0])))
    search.backup(terminals)
    return search


def test_soft_values_of_a_fixed_tree_match_torch(toys):
    toy, mlx_lm = toys
    sequences = [toy.sequences[i] for i in np.random.default_rng(0).choice(len(toy.sequences), 40, replace=False)]
    by_torch, by_mlx = fixed_tree(toy.lm, toy, sequences), fixed_tree(mlx_lm, toy, sequences)
    size = by_torch.tree.size
    assert by_mlx.tree.size == size
    np.testing.assert_array_equal(by_mlx.tree.children[:size], by_torch.tree.children[:size])
    np.testing.assert_allclose(by_mlx.tree.value[:size], by_torch.tree.value[:size], atol=1e-5)


def test_maxent_ts_on_mlx_converges_to_the_exact_target(toys):
    toy, mlx_lm = toys
    lam = 2.0
    target, exact_root = toy.target(lam)
    config = search_config(lam=lam, n_rollouts=3000, batch_size=8, progress=False)
    search = TreeSearch(mlx_lm, toy.problem, config)
    search.run()
    # The torch backend's test allows 0.03 (measured 0.002-0.012); the priors differ by ~1e-7 here.
    assert total_variation(tree_distribution(search), target) < 0.03
    assert abs(search.tree.value[ROOT] - exact_root) < 0.01


@pytest.mark.base_model
def test_base_model_log_probs_match_and_the_run_switches_backend(tmp_path, base_tokenizer):
    import csv

    from sadt.codec import Codec
    from sadt.lm.base_model import load_base_lm
    from search import demo

    codec = Codec(base_tokenizer)
    prompt_ids, _ = codec.encode_prompt(np.sin(np.arange(20) / 3.0))  # MLX on this CPU runs ~3 GFLOP/s: keep it short
    actions = codec.action_token_ids
    prefixes = [[], [actions[1], actions[2]], [actions[9], actions[0], actions[10]]]
    log_probs = []
    for backend in ("torch", "mlx"):
        lm, _ = load_base_lm(backend=backend)
        batch = lm.extend(lm.prefill(prompt_ids), prefixes, actions)
        log_probs.append(torch.log_softmax(batch.logits.double(), dim=-1))
    assert isinstance(lm, MLXLM)
    torch.testing.assert_close(log_probs[1], log_probs[0], atol=1e-3, rtol=0)

    series = tmp_path / "short.csv"  # 16 steps and 6 past the end keep MLX-on-CPU quick
    series.write_text("value\n" + "\n".join(f"{100 + 10 * np.sin(i / 2):.1f}" for i in range(16)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"csv: {series}\nhorizon: 6\nmethods: [maxent_ts]\nbackend: mlx\nn_samples: 4\noutput_dir: {tmp_path}\n"
        "search:\n  n_rollouts: 4\n  batch_size: 4\n  lam: 5.0\n"
    )
    assert demo.main(["--config", str(config)]) == 0
    with (tmp_path / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["samples"]) == 4 and int(row["nfe_tokens"]) > 4 * 6 * 2


def test_hybrid_on_mlx_with_the_mlx_head_matches_torch(toys, tmp_path):
    toy, mlx_lm = toys
    torch_head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].detach().float(), FlowHeadConfig(hidden=16))
    with torch.no_grad():
        for p in torch_head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch_head.requires_grad_(False)
    save_head(torch_head, tmp_path, HeadCard.for_head(torch_head, lm_fingerprint="toy", lam=2.0))
    mlx_head, _ = MLXFlowHead.load(tmp_path, "toy")
    config = search_config(lam=2.0, n_rollouts=48, batch_size=8, progress=False, hybrid="visits", hybrid_n0=1.0)
    by_torch = TreeSearch(toy.lm, toy.problem, config, value_head=torch_head).run()
    by_mlx = TreeSearch(mlx_lm, toy.problem, config, value_head=mlx_head).run()
    # Same seed, same decisions: the float32 differences (~1e-6) are far below the selection noise.
    assert by_mlx.samples == by_torch.samples and by_mlx.tree.size == by_torch.tree.size
    assert by_mlx.root_value == pytest.approx(by_torch.root_value, abs=1e-5)
