"""A text task's features on each step's top-k support (trainers.features, `compact`): the head scores k tokens,
not the vocabulary, and every loss is what the whole vocabulary gives (P_F ∝ p_k exp(λ Q_φ) is 0 off the support)."""

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from sadt import losses
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.grammar import TextGrammar
from sadt.lm.backend import TorchLM
from sadt.policy import masked_log_softmax
from trainers.features import LMFeatures, support_positions
from trainers.options import FeatureConfig

K, LAM = 5, 2.0


def text_batch(lm: TorchLM, grammar: TextGrammar) -> dict:
    """Two prompts' draws of p_k (tiny LM, top 5 of 64 tokens), collated as the trainer's batches are."""
    from sadt.rollout import rollout

    prompts, rows = [(1, 2), (3, 4, 5)], []
    generator = torch.Generator().manual_seed(0)
    for prompt in prompts:
        out = rollout(lm, lm.prefill(list(prompt)), range(64), grammar, [[]] * 4, top_k=K, generator=generator)
        rows += [(prompt, path) for path in out.full_sequences([[]] * 4)]
    T = max(len(path) for _, path in rows)
    actions = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (_, path) in enumerate(rows):
        actions[i, : len(path)] = torch.tensor(path)
    return {"prompts": [p for p, _ in rows], "actions": actions, "mask": actions >= 0}


def random_head(hidden_size: int, embeddings: torch.Tensor) -> MLPFlowHead:
    head = MLPFlowHead(embeddings, FlowHeadConfig(hidden=8, layers=1))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():  # the output layers start at 0: give every parameter a value
            p.copy_(torch.randn(p.shape, generator=generator))
    return head


def test_top_k_features_give_the_whole_vocabularys_losses():
    model = tiny_llama(0)
    lm = TorchLM(model)
    grammar = TextGrammar(n_actions=64, max_tokens=4, stop_actions=(0,))
    batch = text_batch(lm, grammar)
    compact = LMFeatures(lm, list(range(64)), FeatureConfig(), "tiny")
    compact.attach(grammar, K)
    whole = LMFeatures(lm, list(range(64)), FeatureConfig(), "tiny")
    whole.attach(grammar, None)  # the untruncated prior, cut to its top k below by hand
    assert compact.compact and not whole.compact
    small, full = compact(batch), whole(batch)
    assert small.log_prior.shape[-1] == K and full.log_prior.shape[-1] == 64
    torch.testing.assert_close(small.hidden, full.hidden)
    log_prior = masked_log_softmax(full.log_prior, torch.ones_like(full.log_prior, dtype=torch.bool), K)
    head = random_head(lm.hidden_size, lm.head.weight.float()).requires_grad_(False)
    q_small, q_full = head.q_at(small.hidden, small.support), head.q(full.hidden)
    torch.testing.assert_close(q_small, q_full.gather(-1, small.support))  # Q at the support's columns
    positions = support_positions(small.support, batch["actions"], batch["mask"])
    assert torch.equal(small.support.gather(-1, positions[..., None])[..., 0][batch["mask"]],
                       batch["actions"][batch["mask"]])
    log_z, reward = torch.tensor([0.3] * 8), torch.linspace(-1.0, 1.0, 8)
    compact_args = (q_small.double(), small.log_prior.double(), positions, batch["mask"])
    whole_args = (q_full.double(), log_prior.double(), batch["actions"], batch["mask"])
    for loss in (losses.trajectory_balance, losses.detailed_balance, losses.subtrajectory_balance):
        np.testing.assert_allclose(loss(*compact_args, log_z.double(), reward.double(), LAM).numpy(),
                                   loss(*whole_args, log_z.double(), reward.double(), LAM).numpy(), rtol=1e-5,
                                   atol=1e-5)
    weights = torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(losses.weighted_cross_entropy(*compact_args, weights, LAM).numpy(),
                               losses.weighted_cross_entropy(*whole_args, weights, LAM).numpy(), rtol=1e-5, atol=1e-5)
    # The second call reads the memory cache: the same features.
    again = compact(batch)
    for x, y in zip(small, again):
        torch.testing.assert_close(x, y)


def test_an_action_off_its_steps_support_is_refused():
    support = torch.tensor([[[3, 7, 9]]])
    assert support_positions(support, torch.tensor([[7]]), torch.tensor([[True]])).tolist() == [[1]]
    with pytest.raises(ValueError, match="not among its step's top-k tokens"):
        support_positions(support, torch.tensor([[8]]), torch.tensor([[True]]))
    assert support_positions(support, torch.tensor([[-1]]), torch.tensor([[False]])).tolist() == [[0]]  # padding


def test_top_k_text_features_round_trip_through_their_own_store(tmp_path):
    """A second fit reads a text task's top-k features from the store (no LM forward), in a folder apart from the
    whole-vocabulary features and from another k's."""
    lm = TorchLM(tiny_llama(0))
    grammar = TextGrammar(n_actions=64, max_tokens=4, stop_actions=(0,))
    batch = text_batch(lm, grammar)
    first = LMFeatures(lm, list(range(64)), FeatureConfig(store=str(tmp_path)), "tiny")
    first.attach(grammar, K)
    written = first(batch)
    assert [p.name for p in tmp_path.iterdir()] == [f"tiny.top{K}"]

    class NoForward(TorchLM):
        def path_states(self, *args, **kwargs):
            raise AssertionError("the store should have answered")

    second = LMFeatures(NoForward(tiny_llama(0)), list(range(64)), FeatureConfig(store=str(tmp_path)), "tiny")
    second.attach(grammar, K)
    for x, y in zip(written, second(batch)):
        torch.testing.assert_close(x, y)
