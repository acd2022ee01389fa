"""The allowed action set A(s) of a digit forecast, vectorised over a batch of states.

A forecast is `horizon` values, each 1..max_digits digits without leading zeros, each closed by
the separator. So every terminal parses to exactly `horizon` values, and one value has exactly
one spelling (the string -> value map is injective, so a distribution over strings is one over
forecasts). END is allowed at a value boundary once `min_values` values are written; with the
default `min_values = horizon` the forecast simply ends at its last separator.

State per row: digits of the value being written, its integer so far, values completed, done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from sadt.codec import END, N_ACTIONS, SEP


@dataclass
class GrammarState:
    n_digits: torch.Tensor  # (B,) digits of the current value
    value: torch.Tensor  # (B,) integer written so far in the current value
    n_values: torch.Tensor  # (B,) completed values
    done: torch.Tensor  # (B,) bool

    def index(self, rows: torch.Tensor) -> GrammarState:
        return GrammarState(self.n_digits[rows], self.value[rows], self.n_values[rows], self.done[rows])


@dataclass(frozen=True)
class DigitGrammar:
    horizon: int  # values per forecast
    max_digits: int = 4
    min_values: int | None = None  # END allowed from here on; None means `horizon` (never before the end)

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"grammar `horizon` must be >= 1 value, got {self.horizon}")
        if self.max_digits < 1:
            raise ValueError(f"grammar `max_digits` must be >= 1, got {self.max_digits}")

    @property
    def max_tokens(self) -> int:
        """Longest forecast in tokens: every value at max_digits plus its separator."""
        return self.horizon * (self.max_digits + 1)

    def initial(self, batch: int, device: torch.device | str = "cpu") -> GrammarState:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return GrammarState(zeros, zeros.clone(), zeros.clone(), torch.zeros(batch, dtype=torch.bool, device=device))

    def mask(self, state: GrammarState) -> torch.Tensor:
        """Allowed actions, (B, A) bool. Finished rows allow nothing."""
        live = ~state.done
        at_start = state.n_digits == 0
        more_digits = at_start | ((state.n_digits < self.max_digits) & (state.value > 0))  # no leading zeros
        min_values = self.horizon if self.min_values is None else self.min_values
        mask = torch.zeros(state.done.shape[0], N_ACTIONS, dtype=torch.bool, device=state.done.device)
        mask[:, :SEP] = (live & more_digits)[:, None]
        mask[:, SEP] = live & ~at_start
        mask[:, END] = live & at_start & (state.n_values >= min_values)
        return mask

    def advance(self, state: GrammarState, actions: torch.Tensor) -> GrammarState:
        """State after each row takes `actions` (B,); rows already done stay done."""
        is_digit = actions < SEP
        is_sep = actions == SEP
        n_values = state.n_values + is_sep.long()
        n_digits = torch.where(is_digit, state.n_digits + 1, torch.where(is_sep, 0, state.n_digits))
        value = torch.where(is_digit, state.value * 10 + actions.clamp(max=9), torch.where(is_sep, 0, state.value))
        done = state.done | (actions == END) | (n_values >= self.horizon)
        keep = state.done  # a finished row ignores whatever padding it is fed
        return GrammarState(
            torch.where(keep, state.n_digits, n_digits),
            torch.where(keep, state.value, value),
            torch.where(keep, state.n_values, n_values),
            done,
        )

    def replay(self, prefixes: list[list[int]], device: torch.device | str = "cpu") -> GrammarState:
        """States after each prefix of action indices (ragged list of B sequences)."""
        return replay(self, prefixes, device)


def replay(grammar, prefixes: list[list[int]], device: torch.device | str = "cpu"):
    """Advance `grammar.initial(B)` along ragged prefixes; works for any grammar's state dataclass."""
    state = grammar.initial(len(prefixes), device)
    for t in range(max((len(p) for p in prefixes), default=0)):
        actions = torch.tensor([p[t] if t < len(p) else 0 for p in prefixes], device=device)
        ended = torch.tensor([t >= len(p) for p in prefixes], device=device)
        stepped = grammar.advance(state, actions)
        state = type(state)(*(
            torch.where(ended, getattr(state, f.name), getattr(stepped, f.name)) for f in dataclasses.fields(state)
        ))
    return state


@dataclass
class LengthState:
    length: torch.Tensor  # (B,) actions taken
    done: torch.Tensor  # (B,) bool

    def index(self, rows: torch.Tensor) -> LengthState:
        return LengthState(self.length[rows], self.done[rows])


class AnyActionGrammar:
    """Grammars that allow every action of `n_actions` until a row is done; they differ in when it is."""

    n_actions: int

    def initial(self, batch: int, device: torch.device | str = "cpu") -> LengthState:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return LengthState(zeros, zeros.bool())

    def mask(self, state: LengthState) -> torch.Tensor:
        return (~state.done)[:, None].expand(-1, self.n_actions).clone()  # (B, A)

    def replay(self, prefixes: list[list[int]], device: torch.device | str = "cpu") -> LengthState:
        return replay(self, prefixes, device)


@dataclass(frozen=True)
class FixedLengthGrammar(AnyActionGrammar):
    """Every sequence of exactly `length` actions out of `n_actions`: the enumerable toy problem."""

    n_actions: int
    length: int

    @property
    def max_tokens(self) -> int:
        return self.length

    def advance(self, state: LengthState, actions: torch.Tensor) -> LengthState:
        length = torch.where(state.done, state.length, state.length + 1)
        return LengthState(length, length >= self.length)


@dataclass(frozen=True)
class TextGrammar(AnyActionGrammar):
    """Free text over an LM's whole vocabulary: any token, until a stop token (EOS, a newline, ...) or
    `max_tokens`. Actions are token ids (`action_token_ids = range(n_actions)`); the stop token is
    part of the text. Use it with `top_k`: the search's tree then keeps k children a node."""

    n_actions: int  # the vocabulary
    max_tokens: int
    stop_actions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"text grammar `max_tokens` must be >= 1, got {self.max_tokens}")
        bad = [a for a in self.stop_actions if not 0 <= a < self.n_actions]
        if bad:
            raise ValueError(f"text grammar stop token {bad[0]} is outside the vocabulary of {self.n_actions}")

    def advance(self, state: LengthState, actions: torch.Tensor) -> LengthState:
        length = torch.where(state.done, state.length, state.length + 1)
        stop = torch.isin(actions, torch.tensor(self.stop_actions, dtype=actions.dtype, device=actions.device))
        return LengthState(length, state.done | (length >= self.max_tokens) | (stop & ~state.done))
