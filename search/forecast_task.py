"""A forecasting problem as the search sees it: prompt ids, grammar, and a reward over action sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sadt.codec import Codec, Scaler
from sadt.flow_head import MLPFlowHead
from sadt.grammar import DigitGrammar
from sadt.head_card import ValueForm
from sadt.lm.backend import LMBackend
from sadt.partial_reward import PartialRewardValue, ShapedValue, completed_values
from sadt.rewards import ForecastReward, RewardConfig
from sadt.value import HeadValue, Value, head_parts
from search.config import SearchConfig, SearchResult
from search.sampler import make_sampler
from search.smc import SMC, SMCResult
from search.tree_search import TreeSearch

# The parameter-free values, by the name a run gives them (`ValueForm.parameter_free_name`):
PARTIAL_REWARD = ValueForm.PARTIAL.parameter_free_name  # Q(s, a) = R(s·a), no trained head
LOOK_AHEAD_REWARD = ValueForm.LOOK_AHEAD.parameter_free_name  # Q(s, a) = R⁺(s·a), the look-ahead reward
DIGIT_AHEAD_REWARD = ValueForm.DIGIT_AHEAD.parameter_free_name  # Q = R⁺ᵈ(s·a): R⁺ with the value being written done
SOFT_AHEAD_REWARD = ValueForm.SOFT_AHEAD.parameter_free_name  # Q = V⁺ᵈ(s·a): R⁺ᵈ over guesses of the rest, at λ
PARAMETER_FREE_VALUES = {f.parameter_free_name: f.value for f in ValueForm if f is not ValueForm.NONE}  # name -> form


class ContextTooLong(ValueError):
    """The prompt and forecast do not fit in the LM's context window; the message says how to shorten it."""


def check_fits(prompt_tokens: int, forecast_tokens: int, window: int | None, context_steps: int, horizon: int,
               back_test: bool = False) -> None:
    """Raise `ContextTooLong` when `prompt_tokens + forecast_tokens > window`, with the advice that fixes it:
    a back-test (the last 20% held out) keeps fewer rows; a forecast whose own tokens fill most of the window
    names `horizon` and its maximum; otherwise forecast from fewer context steps."""
    if window is None or prompt_tokens + forecast_tokens <= window:
        return
    per_step = prompt_tokens / max(context_steps, 1)  # prompt tokens per context step
    per_forecast_step = forecast_tokens / max(horizon, 1)  # most tokens per forecast step
    usable = 0.95 * window  # a margin: the encoding's length varies a little with the values
    what = (f"a context of {context_steps} steps encodes to {prompt_tokens} tokens; with a forecast of {horizon} steps "
            f"(up to {forecast_tokens} tokens) that exceeds the model's window of {window}")
    if back_test:
        rows = int(usable / (0.8 * per_step + 0.2 * per_forecast_step))
        advice = (f"a back-test forecasts the series' last 20%: forecast from the last {rows} rows or fewer (keep "
                  f"only the CSV's last rows), or forecast past the end with `horizon:`")
    elif forecast_tokens > window / 2:
        advice = f"`horizon` must be at most {int(window / 2 / per_forecast_step)} steps for this model"
    else:
        advice = f"forecast from the last {int((usable - forecast_tokens) / per_step)} steps or fewer"
    raise ContextTooLong(f"{what}: {advice}")


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
        cls, codec: Codec, context: np.ndarray, horizon: int, reward_config: RewardConfig | None = None,
        window: int | None = None, back_test: bool = False,
    ) -> ForecastTask:
        """Encode `context` (series units), fit the scaler, and set up grammar and reward. With the LM's `window`,
        a prompt plus forecast that cannot fit is refused (`ContextTooLong`) before the reward is built (its
        context spectra once took 4 GB for a 30k-step series that did not fit anyway)."""
        prompt_ids, scaler = codec.encode_prompt(context)
        grammar = DigitGrammar(horizon=horizon, max_digits=codec.config.max_digits)
        check_fits(len(prompt_ids), grammar.max_tokens, window, context.size, horizon, back_test)
        reward = ForecastReward(scaler.transform(context), horizon, reward_config)
        return cls(codec, prompt_ids, scaler, grammar, reward, horizon)

    @property
    def action_token_ids(self) -> list[int]:
        """The digits, the separator and the stop: each action's token id (the codec's)."""
        return self.codec.action_token_ids

    def check_window(self, window: int | None, context_steps: int, back_test: bool = False) -> None:
        """Refuse, before any forward, a prompt whose tokens plus the longest forecast exceed `window`
        (a 100k-step CSV once ran the machine out of memory in its prefill)."""
        check_fits(len(self.prompt_ids), self.grammar.max_tokens, window, context_steps, self.horizon, back_test)

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
        return self.reward.partial([completed_values(self.codec, s) for s in sequences])

    def value(self, head, lam: float | None = None) -> Value | None:
        """The `Value` the search reads for `head`: a trained head (bare, or a loaded `SearchHead`, whose card
        gives the λ it was trained at), `PARTIAL_REWARD` (Q = R(s·a)),
        `LOOK_AHEAD_REWARD` (Q = R⁺(s·a)), `DIGIT_AHEAD_REWARD` (Q = R⁺ᵈ(s·a)), `SOFT_AHEAD_REWARD`
        (Q = V⁺ᵈ(s·a) at λ = `lam`), or None.

        A head trained with a `value_form` is wrapped so that it adds this task's R(s·a); one trained
        on "soft_ahead" needs the search's λ too. A `Value` is returned as it is.
        """
        if head is None or isinstance(head, Value):
            return head
        if isinstance(head, str):
            if head not in PARAMETER_FREE_VALUES:
                raise ValueError(f"value head must be a loaded head or one of {list(PARAMETER_FREE_VALUES)}, "
                                 f"got {head!r}")
            if head == SOFT_AHEAD_REWARD and lam is None:
                raise ValueError(f"value {head!r} averages exp(λ r): pass the search's `lam`")
            return PartialRewardValue(self.codec, self.reward, PARAMETER_FREE_VALUES[head], lam)
        module, trained_lam, lm = head_parts(head)
        if isinstance(module, MLPFlowHead) and module.config.shaped:
            return ShapedValue(module, self.codec, self.reward, lam, trained_lam)
        return HeadValue(module, trained_lam, lm)

    def values(self, sequences: list[list[int]]) -> np.ndarray:
        """Valid forecasts in the series' own units, (B_valid, H)."""
        scaled, valid = self.decode(sequences)
        return self.scaler.inverse(scaled[valid])

    def sampler(self, lm: LMBackend, config: SearchConfig, value_head=None) -> TreeSearch | SMC:
        """The configured sampler on this task, not yet run (`run(until)` for an anytime curve)."""
        return make_sampler(lm, self, config, value_head)

    def search(self, lm: LMBackend, config: SearchConfig, value_head=None) -> SearchResult | SMCResult:
        """Run the configured sampler (MaxEnt-TS by default; any tree or SMC method) on this task.

        `value_head` (a loaded flow head, `sadt.head_io.load_value_head`, or "partial_reward" for
        the parameter-free Q(s, a) = R(s·a); see `value`) is needed by the hybrid,
        `flow` and `twisted_smc`. `task.values(result.samples)` gives the forecasts in series units.
        """
        return self.sampler(lm, config, value_head).run()
