"""The numbers a forecast state holds, as a head's inputs: the context, the values written, the value being written.

The value probe found that the frozen LM's states hold under 3% of the soft value's within-prompt variance while
the values written hold most of it (docs/benchmarks_log.md, "Why the head is flat"). A head with
`residual_inputs: numbers` (`sadt.flow_head.FlowHeadConfig`) reads these instead of h(s): a small GRU over the
context's values and then the values written (`MLPFlowHead.number_q`), and three numbers of the state itself.
Every value is standardised by its context's mean and standard deviation (scaled units, `sadt.codec`), so the
head sees shapes, not levels. Computing them costs no LM forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sadt.codec import END, SEP

N_STATE_FEATURES = 3  # the unfinished value's leading digits as a fraction, its digits / max_digits, k / H


@dataclass
class NumberInputs:
    """The numbers of B rows' states: one state per row (a search step) or every state along each row's path
    (a training batch, `steps` T)."""

    context: list[torch.Tensor]  # per row: its context's values, standardised (L,)
    written: list[torch.Tensor]  # per row: the values its last state has completed, standardised alike (K,)
    counts: torch.Tensor  # (B, T) long: values completed at each state (a prefix of `written`)
    state: torch.Tensor  # (B, T, N_STATE_FEATURES)


def standardise(values: np.ndarray, context: np.ndarray) -> torch.Tensor:
    """(values − mean(context)) / std(context), float32 (a flat context: divided by 1)."""
    scale = float(context.std()) or 1.0
    return torch.as_tensor((np.asarray(values, dtype=np.float64) - context.mean()) / scale, dtype=torch.float32)


def walk(actions: Sequence[int], max_digits: int, horizon: int, precision: int) -> tuple[list[float], np.ndarray]:
    """The values `actions` completes (scaled units) and, for each state s_0..s_n along it (s_t: the first t
    actions), (values completed, leading-digits fraction, digits / max_digits, k / H): (n + 1, 4)."""
    values, digits, rows = [], "", []
    for t in range(len(actions) + 1):
        lead = int(digits) / 10 ** len(digits) if digits else 0.0
        rows.append((len(values), lead, len(digits) / max_digits, min(len(values), horizon) / horizon))
        if t == len(actions) or actions[t] in (END, -1):
            break
        if actions[t] == SEP:
            if digits:
                values.append(int(digits) / 10**precision)
            digits = ""
        else:
            digits += str(actions[t])
    return values, np.asarray(rows, dtype=np.float64)


def number_inputs(contexts: Sequence[np.ndarray], paths: Sequence[Sequence[int]], max_digits: int, horizon: int,
                  precision: int, steps: int | None = None) -> NumberInputs:
    """The numbers of each row: `contexts[i]` its context (scaled units; rows that share a context should share
    the array, which is then standardised once), `paths[i]` its actions after the prompt. `steps` T: the states
    s_0..s_{T-1} of each path (past a path's end, its last state again); None: the state after the whole path."""
    walks = [walk(list(path), max_digits, horizon, precision) for path in paths]
    if steps is None:
        states = [rows[-1:] for _, rows in walks]
    else:
        states = [rows[: max(len(path), 1)][:steps] for (_, rows), path in zip(walks, paths)]
        states = [np.concatenate([s, np.repeat(s[-1:], steps - len(s), axis=0)]) for s in states]
    table = torch.as_tensor(np.stack(states))  # (B, T, 4)
    standardised: dict[int, torch.Tensor] = {}
    for c in contexts:
        standardised.setdefault(id(c), standardise(c, np.asarray(c)))
    return NumberInputs(
        context=[standardised[id(c)] for c in contexts],
        written=[standardise(values, np.asarray(c)) for (values, _), c in zip(walks, contexts)],
        counts=table[..., 0].long(), state=table[..., 1:].float(),
    )
