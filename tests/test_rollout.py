import math

import numpy as np
import pytest
import torch

from sadt.codec import END, SEP, Codec
from sadt.grammar import DigitGrammar
from sadt.policy import masked_log_softmax
from sadt.rollout import rollout
from sadt.value import Value

PROMPT = [33, 28, 34, 28, 35, 28]  # "1,2,3," in the shipped tokenizer's ids


def test_masked_log_softmax_renormalises_over_the_allowed_set():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False]])
    expected = torch.tensor([1.0, 3.0]) - math.log(math.exp(1) + math.exp(3))
    out = masked_log_softmax(logits, mask)
    torch.testing.assert_close(out[0, [0, 2]], expected.double())
    assert torch.isinf(out[0, [1, 3]]).all()
    top1 = masked_log_softmax(logits, mask, top_k=1)
    assert top1[0, 2] == 0 and torch.isinf(top1[0, [0, 1, 3]]).all()


def sequence_log_prior(lm, codec, grammar, actions: list[int]) -> float:
    """log p(x) by one full forward per step: the reference for the rollout's bookkeeping."""
    ids = torch.tensor(codec.action_token_ids)
    total, state = 0.0, grammar.initial(1)
    for t, a in enumerate(actions):
        tokens = PROMPT + [codec.action_token_ids[b] for b in actions[:t]]
        logits = lm.model(torch.tensor([tokens])).logits[0, -1, ids]
        total += masked_log_softmax(logits[None], grammar.mask(state))[0, a].item()
        state = grammar.advance(state, torch.tensor([a]))
    return total


def test_rollouts_are_grammatical_and_log_prior_is_exact(tiny_lm, base_tokenizer):
    codec = Codec(base_tokenizer)
    grammar = DigitGrammar(horizon=3, max_digits=2)
    prompt = tiny_lm.prefill(PROMPT)
    prefixes = [[], [4], [1, 2, SEP]]
    generator = torch.Generator().manual_seed(0)
    out = rollout(tiny_lm, prompt, codec.action_token_ids, grammar, prefixes, generator=generator)
    for i, seq in enumerate(out.full_sequences(prefixes)):
        assert seq.count(SEP) == 3 and seq[-1] == SEP and END not in seq
        sampled = out.actions[i, : out.lengths[i]].tolist()
        assert seq[len(prefixes[i]):] == sampled
        reference = sequence_log_prior(tiny_lm, codec, grammar, seq) - sequence_log_prior(
            tiny_lm, codec, grammar, prefixes[i]
        )
        assert out.log_prior[i, : out.lengths[i]].sum().item() == pytest.approx(reference, abs=1e-9)


def test_samples_follow_the_restricted_prior(tiny_lm, base_tokenizer):
    """Horizon 1, one digit: ten forecasts whose exact probabilities we can list."""
    codec = Codec(base_tokenizer)
    grammar = DigitGrammar(horizon=1, max_digits=1)
    with torch.no_grad():
        tiny_lm.head.weight.mul_(20.0)  # a random tiny LM is nearly uniform; sharpen it so the test can tell
    prompt = tiny_lm.prefill(PROMPT)
    exact = np.exp([sequence_log_prior(tiny_lm, codec, grammar, [d, SEP]) for d in range(10)])
    assert exact.sum() == pytest.approx(1.0)
    n = 4000
    generator = torch.Generator().manual_seed(1)
    out = rollout(tiny_lm, prompt, codec.action_token_ids, grammar, [[]] * n, generator=generator)
    assert (out.actions[:, 1] == SEP).all()
    empirical = np.bincount(out.actions[:, 0].numpy(), minlength=10) / n
    # TV of n multinomial draws has sd ~ sqrt(K / n) / 2 ≈ 0.025; 0.06 is > 2 sd, far below a wrong prior.
    assert 0.5 * np.abs(empirical - exact).sum() < 0.06
    assert 0.5 * np.abs(np.full(10, 0.1) - exact).sum() > 0.1  # the check can tell the prior from uniform


class RecordingHead(Value):
    """A value that reads sequences: records what it is given, returns Q = 0."""

    def __init__(self, n_actions: int) -> None:
        self.n_actions, self.calls = n_actions, []

    def __call__(self, hidden, sequences):
        sequences = sequences()
        assert len(sequences) == hidden.shape[0]
        self.calls.append([list(s) for s in sequences])
        return torch.zeros(hidden.shape[0], self.n_actions)


def test_a_sequence_reading_head_sees_each_live_rows_actions_so_far(tiny_lm, base_tokenizer):
    codec = Codec(base_tokenizer)
    grammar = DigitGrammar(horizon=2, max_digits=2)
    prefixes = [[], [4], [1, SEP, 2]]
    head = RecordingHead(len(codec.action_token_ids))
    out = rollout(tiny_lm, tiny_lm.prefill(PROMPT), codec.action_token_ids, grammar, prefixes, value_head=head,
                  guide_lam=1.0, generator=torch.Generator().manual_seed(0))
    full = out.full_sequences(prefixes)
    expected_calls = []
    for t in range(int(out.lengths.max())):  # step t sees each row still running, prefix + its first t actions
        expected_calls.append([full[i][: len(prefixes[i]) + t] for i in range(3) if out.lengths[i] > t])
    assert head.calls == expected_calls
