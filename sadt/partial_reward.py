"""The partial reward as a value: Q(s, a) = R(s·a), alone or under a trained residual head.

R(s) (`ForecastReward.partial`) scores the values a state has completed, spliced onto the
context's tail, and equals r(x) once the forecast is finished. The frozen LM's hidden states do
not carry the spectral reward (benchmarks/value_probe.py: no layer explains more than 3% of the
soft values' within-prompt variance on unseen windows, 2% even for finished forecasts, where R
explains 60%), so a head on those states alone cannot learn it. Two values use R instead:

- `PartialRewardValue`: Q(s, a) = R(s·a), no parameters;
- `ShapedValue`: Q(s, a) = β_φ(k/H)·R(s·a) + g_φ(h(s))_a, a flow head trained on the residual (the
  forward-looking parameterisation of Pan et al. 2023, "Better training of GFlowNets with local
  credit and incomplete trajectories"), with β = 1 or one learned weight per share k/H of the
  horizon's values completed (`--model.head.reward_weight_bins`): R is near pure noise about the soft
  value early in a forecast and exact at its end.

The value R is one choice (`TASK_VALUES`): "partial" R; "look_ahead" R⁺, the completed values plus a
seasonal-naive fill of the rest (`ForecastReward.ahead`); "digit_ahead" R⁺ᵈ, R⁺ that also reads the value
being written (`digit_ahead_q`); "soft_ahead" V⁺ᵈ, R⁺ᵈ averaged over noisy guesses of the rest at λ
(`ForecastReward.soft_ahead`). All four serve as parameter-free values (the benchmarks compare them);
a trained head's `value_form` (`--model.head.value_form`, `VALUE_FORMS`) is R⁺ᵈ or V⁺ᵈ only: heads on R and R⁺
were no better proposals than p at λ = 15 and were dropped (`DROPPED_VALUE_FORMS`).

R and R⁺ change only at a separator, so they tell digits apart only once a value is finished: the
choice between the digits of a value, where the tilt acts first, they leave to the residual. R⁺ᵈ
scores each digit by the value it commits to (`nearest_completion`).

Both are `sadt.value.Value`s: called as `value(hidden, sequences)`, `sequences()` each row's actions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sadt.codec import SEP, Codec
from sadt.head_card import ValueForm
from sadt.number_inputs import number_inputs
from sadt.rewards import ForecastReward, RewardConfig
from sadt.value import Sequences, Value


def prompt_reward(codec: Codec, prompt_ids: Sequence[int], horizon: int, config: RewardConfig) -> ForecastReward:
    """The reward of a harvested prompt, rebuilt from the prompt's own scaled (rounded) values."""
    context = codec.text_to_values(codec.tokenizer.decode(list(prompt_ids)))
    return ForecastReward(context, horizon, config)


def completed_values(codec: Codec, actions: Sequence[int]) -> np.ndarray:
    """The scaled values an action sequence has finished (an unfinished last value is dropped)."""
    return codec.text_to_values(codec.actions_to_text(np.asarray(actions, dtype=np.int64)))


# The forms of `sadt.head_card.ValueForm`, as the strings configs and cards hold.
TASK_VALUES = tuple(f.value for f in ValueForm if f is not ValueForm.NONE)  # R, R⁺, R⁺ᵈ, V⁺ᵈ (module docstring)
VALUE_FORMS = (ValueForm.DIGIT_AHEAD.value, ValueForm.SOFT_AHEAD.value)  # what a trained head may add: R⁺ᵈ, V⁺ᵈ
DROPPED_VALUE_FORMS = (ValueForm.PARTIAL.value, ValueForm.LOOK_AHEAD.value)  # heads on R / R⁺: the last commit that
# trains and loads them
DROPPED_AT = "ca14b55"


def check_value_form(form: str, lam: float | None = None, allowed: Sequence[str] = TASK_VALUES) -> None:
    """A clear error for an unknown form, or for V⁺ᵈ without the λ its average needs."""
    if form not in allowed:
        raise ValueError(f"value form must be one of {tuple(allowed)}, got {form!r}")
    if form == "soft_ahead" and (lam is None or not lam > 0):
        raise ValueError(f"value form 'soft_ahead' averages exp(λ r) over guesses of the rest: it needs λ > 0, "
                         f"got {lam}")


def shaping_value(codec: Codec, reward: ForecastReward, sequences: Sequence[Sequence[int]], form: str,
                  lam: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The value of `form` at s·a and the share k(s·a)/H of the horizon's values s·a has completed, for
    every action a of each action sequence s: two (B, A) arrays. Forms: "partial" R, "look_ahead" R⁺,
    "digit_ahead" R⁺ᵈ (`digit_ahead_q`), "soft_ahead" V⁺ᵈ at λ = `lam`.

    For R and R⁺ only the separator completes a value, so R(s·a) = R(s) and k(s·a) = k(s) for every
    other action (a digit extends the unfinished value, END stops the text), and R(s·SEP) includes
    the finished value.
    """
    check_value_form(form, lam)
    if form in ("digit_ahead", "soft_ahead"):
        return digit_ahead_q(codec, reward, sequences, lam if form == "soft_ahead" else None)
    B, A = len(sequences), len(codec.action_token_ids)
    done = [completed_values(codec, s) for s in sequences] + [completed_values(codec, [*s, SEP]) for s in sequences]
    r = (reward.ahead if form == "look_ahead" else reward.partial)(done)
    share = np.array([min(d.size, reward.horizon) / reward.horizon for d in done])
    q, k = np.repeat(r[:B, None], A, axis=1), np.repeat(share[:B, None], A, axis=1)
    q[:, SEP], k[:, SEP] = r[B:], share[B:]
    return q, k


def nearest_completion(prefix: str, target: int, max_digits: int) -> int:
    """The integer nearest `target` among those whose spelling starts with `prefix`, at most
    `max_digits` digits long: e.g. prefix "4", target 452 -> 452; "5" -> 500; "1", target 950 -> 1000.

    A prefix of length m completed to length L covers [int(prefix)·10^(L−m), (int(prefix)+1)·10^(L−m) − 1];
    "0" is a whole value (the grammar allows no leading zeros).
    """
    if prefix == "0":
        return 0
    best = int(prefix)
    for pad in range(max_digits - len(prefix) + 1):
        low = int(prefix) * 10**pad
        candidate = min(max(target, low), low + 10**pad - 1)
        if abs(candidate - target) < abs(best - target):
            best = candidate
    return best


def digit_ahead_q(codec: Codec, reward: ForecastReward, sequences: Sequence[Sequence[int]],
                  soft_lam: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """R⁺ᵈ(s·a), the look-ahead reward with the value being written completed, and k(s·a)/H: two (B, A) arrays.
    With `soft_lam` = λ, V⁺ᵈ(s·a) in place of R⁺ᵈ: the same completions scored by `ForecastReward.soft_ahead`,
    which averages exp(λ r) over noisy guesses of the values not yet written.

    For a digit a, s·a's unfinished value u·a is completed to the `nearest_completion` of the
    seasonal-naive value y_k at its position k (the one R⁺ would fill in): the closest forecast
    consistent with u·a, so R⁺ᵈ(s·a) is R⁺ of s's completed values plus that value, and
    its share is (k + 1)/H. SEP finishes u, as in R⁺; END and digits the grammar forbids (past
    `max_digits`, after a leading 0, past the horizon) get R⁺(s), their Q is masked anyway.
    """
    scale, max_digits, sep = 10**codec.config.precision, codec.config.max_digits, codec.config.separator
    n_actions, H = len(codec.action_token_ids), reward.horizon
    windows: list[np.ndarray] = []  # B · n_actions completed-value lists, row-major
    for actions in sequences:
        text = codec.actions_to_text(np.asarray(actions, dtype=np.int64))  # decoded once: values and the tail
        done, unfinished = codec.text_to_values(text), text.rpartition(sep)[2]
        here = [done] * n_actions
        if done.size < H:
            series = np.concatenate([reward.context, done])
            target = int(round(series[series.size - reward.season] * scale))
            for digit in range(SEP):
                prefix = unfinished + str(digit)
                if len(prefix) <= max_digits and unfinished != "0":
                    here[digit] = np.append(done, nearest_completion(prefix, target, max_digits) / scale)
            if unfinished:
                here[SEP] = np.append(done, int(unfinished) / scale)
        windows += here
    scored = reward.ahead(windows) if soft_lam is None else reward.soft_ahead(windows, soft_lam)
    r = scored.reshape(len(sequences), n_actions)
    share = np.array([min(w.size, H) / H for w in windows]).reshape(len(sequences), n_actions)
    return r, share


def digits_written(codec: Codec, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """For each action sequence s, how many digits of its unfinished value it has written: (B,) ints,
    0 at the start of a value (where the next digit is its leading one)."""
    sep = codec.config.separator
    return np.array([len(codec.actions_to_text(np.asarray(s, dtype=np.int64)).rpartition(sep)[2])
                     for s in sequences], dtype=np.int64)


class PartialRewardValue(Value):
    """Q(s, a) = the value of `form` at s·a (`shaping_value`: R, R⁺, R⁺ᵈ, or V⁺ᵈ at λ = `lam`): a value
    without parameters for the hybrid, twisted SMC or the flow sampler.

    It reads no LM state (`hidden` only sets the device); use it with `hybrid_offset`, which
    supplies the level that R, a score of the completed values only, lacks.
    """

    def __init__(self, codec: Codec, reward: ForecastReward, form: str, lam: float | None = None) -> None:
        check_value_form(form, lam)
        self.codec, self.reward, self.form, self.lam = codec, reward, form, lam

    def __call__(self, hidden: torch.Tensor, sequences: Sequences) -> torch.Tensor:
        """(B, H) hidden states, the B rows' action sequences -> Q (B, A) float64."""
        q, _ = shaping_value(self.codec, self.reward, sequences(), self.form, self.lam)
        return torch.as_tensor(q, dtype=torch.float64, device=hidden.device)


class ShapedValue(Value):
    """Q_φ(s, a) = β_φ(k/H)·R(s·a) + g_φ(h(s))_a: a head trained with a `value_form` on this task's reward.

    β_φ is 1 unless the head learned one weight per share k/H of the values completed
    (`FlowHeadConfig.reward_weight_bins`, `MLPFlowHead.weigh_reward`), and per digit of the value
    being written (`reward_weight_positions`); R is the head's form (R⁺ᵈ, or V⁺ᵈ at the search's λ, `lam`).
    """

    def __init__(self, head, codec: Codec, reward: ForecastReward, lam: float | None = None,
                 trained_lam: float | None = None) -> None:
        form = head.config.value_form
        if form == "soft_ahead" and lam is None:
            raise ValueError("this head weighs the soft look-ahead value V⁺ᵈ, which needs the search's λ: pass `lam`")
        check_value_form(form, lam, VALUE_FORMS)
        self.head, self.codec, self.reward, self.lam, self.trained_lam = head, codec, reward, lam, trained_lam

    def __call__(self, hidden: torch.Tensor, sequences: Sequences) -> torch.Tensor:
        config, sequences = self.head.config, sequences()
        r, share = shaping_value(self.codec, self.reward, sequences, config.value_form, self.lam)
        r, share = torch.as_tensor(r, device=hidden.device), torch.as_tensor(share, device=hidden.device)
        position = None
        if config.reward_weight_positions:
            position = torch.as_tensor(digits_written(self.codec, sequences), device=hidden.device)[:, None]
        return self.residual(hidden, sequences).double() + self.head.weigh_reward(r, share, position).double()

    def residual(self, hidden: torch.Tensor, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """The head's learned part: its MLP on h(s), or on the forecast's numbers (`residual_inputs: numbers`)."""
        if self.head.config.residual_inputs != "numbers":
            return self.head.q(hidden)
        codec = self.codec.config
        inputs = number_inputs([self.reward.context] * len(sequences), sequences, codec.max_digits,
                               self.reward.horizon, codec.precision)
        return self.head.number_q(inputs)[:, 0].to(hidden.device)
