"""A forecasting problem as the search sees it: prompt ids, grammar, and a reward over action sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sadt.codec import SEP, Codec, Scaler
from sadt.grammar import DigitGrammar
from sadt.lm.backend import LMBackend
from sadt.rewards import ForecastReward, RewardConfig
from search.sampler import run_sampler
from search.smc import SMCResult
from search.tree_search import SearchConfig, SearchResult


class PartialRewardValue:
    """A value function without parameters for the hybrid: Q(s, a) = R(s·a), the partial reward.

    R (`ForecastReward.partial`) scores the values a state has completed, spliced onto the
    context's tail; it is r(x) itself once the forecast is finished. Only the separator completes
    a value, so Q(s, a) = R(s) for every other action and Q(s, SEP) = R(s·SEP). It reads no LM
    state (`hidden` only sets the device): the reward-aware value that frozen LM features lack
    (benchmarks/value_probe.py), to be used with `hybrid_offset`, which supplies the level.
    """

    reads_sequences = True  # called as value_head(hidden, sequences), see sadt.rollout.head_q

    def __init__(self, task: ForecastTask) -> None:
        self.task = task
        self.n_actions = len(task.codec.action_token_ids)

    def __call__(self, hidden: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        """(B, H) hidden states (unused), B action sequences -> Q (B, A)."""
        r = self.task.partial_reward([list(s) for s in sequences] + [list(s) + [SEP] for s in sequences])
        q = np.repeat(r[: len(sequences), None], self.n_actions, axis=1)
        q[:, SEP] = r[len(sequences) :]
        return torch.as_tensor(q, dtype=torch.float64, device=hidden.device)


@dataclass
class ForecastTask:
    codec: Codec
    prompt_ids: list[int]
    scaler: Scaler
    grammar: DigitGrammar
    reward: ForecastReward
    horizon: int

    @classmethod
    def build(
        cls, codec: Codec, context: np.ndarray, horizon: int, reward_config: RewardConfig | None = None
    ) -> ForecastTask:
        """Encode `context` (series units), fit the scaler, and set up grammar and reward."""
        prompt_ids, scaler = codec.encode_prompt(context)
        grammar = DigitGrammar(horizon=horizon, max_digits=codec.config.max_digits)
        reward = ForecastReward(scaler.transform(context), horizon, reward_config)
        return cls(codec, prompt_ids, scaler, grammar, reward, horizon)

    def decode(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Action sequences -> scaled values (B, H) and validity (B,)."""
        padded = np.full((len(sequences), max(len(s) for s in sequences)), -1, dtype=np.int64)
        for i, s in enumerate(sequences):
            padded[i, : len(s)] = s
        return self.codec.decode_actions(padded, self.horizon)

    def reward_fn(self, sequences: list[list[int]]) -> np.ndarray:
        """r(x) of each terminal action sequence, (B,)."""
        return self.reward(*self.decode(sequences)).total

    def partial_reward(self, sequences: list[list[int]]) -> np.ndarray:
        """R(s) of each (possibly unfinished) action sequence from its completed values, (B,)."""
        codec = self.codec
        return self.reward.partial([codec.text_to_values(codec.actions_to_text(np.asarray(s))) for s in sequences])

    def values(self, sequences: list[list[int]]) -> np.ndarray:
        """Valid forecasts in the series' own units, (B_valid, H)."""
        scaled, valid = self.decode(sequences)
        return self.scaler.inverse(scaled[valid])

    def search(self, lm: LMBackend, config: SearchConfig, value_head=None) -> SearchResult | SMCResult:
        """Run the configured sampler (MaxEnt-TS by default; any tree or SMC method) on this task.

        `value_head` (a loaded flow head, `sadt.head_io.load_value_head`) is needed by the hybrid,
        `flow` and `twisted_smc`. `task.values(result.samples)` gives the forecasts in series units.
        """
        return run_sampler(
            lm, self.prompt_ids, self.codec.action_token_ids, self.grammar, self.reward_fn, config, value_head
        )
