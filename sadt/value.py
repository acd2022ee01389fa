"""What a sampler reads besides the LM: a `Value`, Q_φ(s, ·) for a batch of states.

Every form a value takes (a trained head on the LM's states, MLP or MLX; a head trained with a value form and
bound to its task's reward, `sadt.partial_reward.ShapedValue`; a reward without parameters,
`PartialRewardValue`; a LoRA head that reads its own adapted LM) is one `Value`, with one call signature:

    value(hidden (B, H), sequences) -> Q (B, A)

where `sequences()` builds each row's action sequence after the prompt, only for the values that read it. A
value knows the λ it was trained at (`trained_lam`: a search at another λ gets a warning) and the LM whose hidden
states it reads (`lm`; None: the search's own). A task turns what a user hands a sampler into a `Value`
(`search.task.Task.value`); samplers call nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sadt.head_card import HeadCard

Sequences = Callable[[], list[list[int]]]  # each row's action sequence after the prompt, built on demand


class Value(ABC):
    trained_lam: float | None = None  # the λ of the soft values it was fitted to; None: any λ
    lm: Any = None  # the backend whose hidden states it reads; None: the sampler's own

    @abstractmethod
    def __call__(self, hidden: torch.Tensor, sequences: Sequences) -> torch.Tensor:
        """Q(s, ·) of each row, (B, A)."""


class HeadValue(Value):
    """A head on hidden states alone: `head(hidden) -> Q_φ` (an `MLPFlowHead`, an MLX head, any callable)."""

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor], trained_lam: float | None = None,
                 lm: Any = None) -> None:
        self.head, self.trained_lam, self.lm = head, trained_lam, lm

    def __call__(self, hidden: torch.Tensor, sequences: Sequences) -> torch.Tensor:
        return self.head(hidden)


@dataclass
class SearchHead:
    """A loaded flow head ready for the search (`sadt.head_io.load_search_head`): Q_φ, its card, and the backend
    whose hidden states it reads."""

    value_head: Callable  # hidden (B, H) -> Q_φ (B, A)
    card: HeadCard
    lm: Any = None  # a LoRA head's own backend (frozen prior + adapted states); None: the run's LM


def head_parts(head: Any) -> tuple[Any, float | None, Any]:
    """(the head itself, the λ it was trained at, its own LM) of a loaded `SearchHead`, whose card says the λ,
    or of a bare head (λ unknown, the sampler's LM)."""
    if isinstance(head, SearchHead):
        return head.value_head, head.card.lam, head.lm
    return head, None, None


def plain_value(head: Any) -> Value | None:
    """`head` as a `Value` that reads the hidden states alone (a `Value` is returned as it is; None stays None)."""
    if head is None or isinstance(head, Value):
        return head
    head, trained_lam, lm = head_parts(head)
    return HeadValue(head, trained_lam, lm)
