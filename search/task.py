"""What goes into a sampler: a `Task`. Samplers take `(lm, task, config, value_head)`.

A task is the prompt, the actions (each an LM token id) with the grammar that allows them, the reward of a
finished action sequence, and how a value head binds to it (a forecast task wraps a head trained with a value
form in its own partial reward; others read the head as it is). `ForecastTask`, `TextTask` and the toy are
tasks; `Problem` makes one from parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sadt.value import Value, plain_value

RewardFn = Callable[[list[list[int]]], np.ndarray]  # B finished action sequences -> (B,) rewards


class Task(Protocol):
    prompt_ids: Sequence[int]
    action_token_ids: Sequence[int]  # (A,) the vocabulary id of each action index
    grammar: Any  # allowed actions per state: `initial`, `mask`, `advance`, `replay`, `max_tokens`

    def reward_fn(self, sequences: list[list[int]]) -> np.ndarray: ...

    def value(self, head: Any, lam: float | None = None) -> Value | None:
        """What the search reads for `head` (None: no value), bound to this task at the search's λ: one
        `sadt.value.Value`. A `Value` is returned as it is, so binding twice is binding once."""


@dataclass
class Problem:
    """A `Task` from its parts; a value head is read as it is."""

    prompt_ids: Sequence[int]
    action_token_ids: Sequence[int]
    grammar: Any
    reward_fn: RewardFn

    def value(self, head: Any, lam: float | None = None) -> Value | None:
        return plain_value(head)
