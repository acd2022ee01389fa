"""An enumerable toy: a tiny float64 Llama choosing `length` of 3 actions (3^length sequences), with a fixed
random reward, so π* ∝ p·exp(λ r) and log Z are exact by enumeration.

Rewards: "uniform" draws r(x) ~ U(0, 1) per sequence; "sparse" gives r = 1 to the few least likely sequences
whose prior mass adds up to about `sparse_mass` and 0 to the rest (a constraint few draws of p satisfy).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.special import logsumexp

from sadt.grammar import FixedLengthGrammar
from sadt.lm.backend import TorchLM
from sadt.lm.tiny import tiny_llama
from sadt.policy import masked_log_softmax

PROMPT = [1, 9, 4]
ACTION_IDS = [3, 5, 7]
N_ACTIONS = 3


class Toy:
    def __init__(self, length: int = 5, sharpness: float = 4.0, seed: int = 0, reward: str = "uniform",
                 sparse_mass: float = 0.01) -> None:
        if reward not in ("uniform", "sparse"):
            raise ValueError(f"toy reward must be 'uniform' or 'sparse', got {reward!r}")
        self.length = length
        self.lm = TorchLM(tiny_llama(seed))
        with torch.no_grad():
            self.lm.head.weight.mul_(sharpness)  # a random tiny LM is nearly uniform; give the prior some shape
        self.grammar = FixedLengthGrammar(N_ACTIONS, length)
        self.sequences = [list(s) for s in itertools.product(range(N_ACTIONS), repeat=length)]
        self.log_p = self._exact_log_prior()  # (3^length,)
        self.table = np.random.default_rng(seed).uniform(0.0, 1.0, N_ACTIONS**length)
        if reward == "sparse":
            rare = np.argsort(self.log_p)  # least likely first
            chosen = rare[: max(1, int(np.searchsorted(np.cumsum(np.exp(self.log_p[rare])), sparse_mass)))]
            self.table = np.zeros(N_ACTIONS**length)
            self.table[chosen] = 1.0

    @property
    def problem(self) -> ToyTask:
        """The toy as a sampler's task (`search.task.Task`)."""
        return ToyTask(self)

    def index(self, sequence) -> int:
        return int("".join(map(str, sequence)), N_ACTIONS)

    def reward(self, sequences) -> np.ndarray:
        return np.array([self.table[self.index(s)] for s in sequences])

    def target(self, lam: float) -> tuple[np.ndarray, float]:
        """π*(x) over all sequences and the exact root value (1/λ) log Z."""
        scores = self.log_p + lam * self.table
        log_z = logsumexp(scores)
        return np.exp(scores - log_z), log_z / lam

    def _exact_log_prior(self) -> np.ndarray:
        """log p(x) from one full forward over all sequences (no cache, no tree)."""
        ids = torch.tensor([PROMPT + [ACTION_IDS[a] for a in s] for s in self.sequences])
        with torch.no_grad():
            logits = self.lm.model(ids).logits[:, len(PROMPT) - 1 : -1][..., ACTION_IDS]  # (S, L, A)
        log_probs = masked_log_softmax(logits.reshape(-1, N_ACTIONS), torch.ones(1, N_ACTIONS, dtype=torch.bool))
        chosen = torch.tensor(self.sequences).reshape(-1, 1)
        return log_probs.gather(1, chosen).reshape(-1, self.length).sum(1).numpy()


class ToyTask:
    """The toy as the benchmark's runners see a forecast task (`benchmarks.evaluation.draws`)."""

    def __init__(self, toy: Toy) -> None:
        self.toy, self.prompt_ids, self.grammar, self.reward_fn = toy, PROMPT, toy.grammar, toy.reward
        self.action_token_ids = ACTION_IDS

    def value(self, head, lam):
        from sadt.value import plain_value

        return plain_value(head)

    def sampler(self, lm, config, value_head=None):
        from search.sampler import make_sampler

        return make_sampler(lm, self, config, value_head)
