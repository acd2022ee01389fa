"""The partial reward as a value: Q(s, a) = R(s·a), alone or under a trained residual head.

R(s) (`ForecastReward.partial`) scores the values a state has completed, spliced onto the
context's tail, and equals r(x) once the forecast is finished. The frozen LM's hidden states do
not carry the spectral reward (benchmarks/value_probe.py: no layer explains more than 3% of the
soft values' within-prompt variance on unseen windows, 2% even for finished forecasts, where R
explains 60%), so a head on those states alone cannot learn it. Two values use R instead:

- `PartialRewardValue`: Q(s, a) = R(s·a), no parameters;
- `ShapedValue`: Q(s, a) = β_φ(k/H)·R(s·a) + g_φ(h(s))_a, a flow head trained on the residual (the
  forward-looking parameterisation of Pan et al. 2023, "Better training of GFlowNets with local
  credit and incomplete trajectories"; `--model.partial_reward true` in the trainer), with β = 1 or
  one learned weight per share k/H of the horizon's values completed (`--model.reward_weight_bins`):
  R is near pure noise about the soft value early in a forecast and exact at its end; or with R⁺,
  the look-ahead reward (`ForecastReward.ahead`), in place of R (`--model.look_ahead`).

Both are called as `value(hidden, sequences)` (`reads_sequences`, see `sadt.rollout.head_q`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sadt.codec import SEP, Codec
from sadt.rewards import ForecastReward, RewardConfig


def prompt_reward(codec: Codec, prompt_ids: Sequence[int], horizon: int, config: RewardConfig) -> ForecastReward:
    """The reward of a harvested prompt, rebuilt from the prompt's own scaled (rounded) values."""
    context = codec.text_to_values(codec.tokenizer.decode(list(prompt_ids)))
    return ForecastReward(context, horizon, config)


def completed_values(codec: Codec, actions: Sequence[int]) -> np.ndarray:
    """The scaled values an action sequence has finished (an unfinished last value is dropped)."""
    return codec.text_to_values(codec.actions_to_text(np.asarray(actions, dtype=np.int64)))


def partial_reward_q(codec: Codec, reward: ForecastReward, sequences: Sequence[Sequence[int]],
                     look_ahead: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """R(s·a) (R⁺(s·a) with `look_ahead`) and the share k(s·a)/H of the horizon's values s·a has
    completed, for every action a of each action sequence s: two (B, A) arrays.

    Only the separator completes a value, so R(s·a) = R(s) and k(s·a) = k(s) for every other action
    (a digit extends the unfinished value, END stops the text), and R(s·SEP) includes the finished value.
    """
    B, A = len(sequences), len(codec.action_token_ids)
    done = [completed_values(codec, s) for s in sequences] + [completed_values(codec, [*s, SEP]) for s in sequences]
    r = (reward.ahead if look_ahead else reward.partial)(done)
    share = np.array([min(d.size, reward.horizon) / reward.horizon for d in done])
    q, k = np.repeat(r[:B, None], A, axis=1), np.repeat(share[:B, None], A, axis=1)
    q[:, SEP], k[:, SEP] = r[B:], share[B:]
    return q, k


class PartialRewardValue:
    """Q(s, a) = R(s·a) (or R⁺(s·a) with `look_ahead`): a value without parameters for the hybrid,
    twisted SMC or the flow sampler.

    It reads no LM state (`hidden` only sets the device); use it with `hybrid_offset`, which
    supplies the level that R, a score of the completed values only, lacks.
    """

    reads_sequences = True

    def __init__(self, codec: Codec, reward: ForecastReward, look_ahead: bool = False) -> None:
        self.codec, self.reward, self.look_ahead = codec, reward, look_ahead

    def __call__(self, hidden: torch.Tensor, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, H) hidden states, B action sequences -> Q (B, A) float64."""
        q, _ = partial_reward_q(self.codec, self.reward, sequences, self.look_ahead)
        return torch.as_tensor(q, dtype=torch.float64, device=hidden.device)


class ShapedValue:
    """Q_φ(s, a) = β_φ(k/H)·R(s·a) + g_φ(h(s))_a: a head trained with `partial_reward` on this task's reward.

    β_φ is 1 unless the head learned one weight per share k/H of the values completed
    (`FlowHeadConfig.reward_weight_bins`, `MLPFlowHead.weigh_reward`); R is R⁺ for a head
    trained with `look_ahead`.
    """

    reads_sequences = True

    def __init__(self, head, codec: Codec, reward: ForecastReward) -> None:
        self.head, self.codec, self.reward = head, codec, reward

    def __call__(self, hidden: torch.Tensor, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        r, share = partial_reward_q(self.codec, self.reward, sequences, self.head.config.look_ahead)
        r, share = torch.as_tensor(r, device=hidden.device), torch.as_tensor(share, device=hidden.device)
        return self.head.q(hidden).double() + self.head.weigh_reward(r, share).double()
