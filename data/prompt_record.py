"""One prompt's trajectories as `data.buffer.BufferWriter.append` takes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEY_BYTES = 200  # the longest prompt key a buffer stores (fixed-width bytes)


@dataclass
class PromptRecord:
    """One prompt's trajectories, ready to append: per-step arrays are flat, cut by `lengths`."""

    key: str  # identifies the task (series, window, seed): resuming skips keys already stored
    task_index: int  # global index of the task in its task set
    prompt_tokens: np.ndarray  # (P,)
    lengths: np.ndarray  # (n,)
    actions: np.ndarray  # (S,)
    log_prior: np.ndarray  # (S,)
    reward: np.ndarray  # (n,)
    source: np.ndarray  # (n,) codes from SOURCES
    values: np.ndarray | None = None  # (S,) NaN where unknown
    visits: np.ndarray | None = None  # (S,) 0 where unknown
    reward_task: np.ndarray | None = None  # (n,)
    reward_spectral: np.ndarray | None = None  # (n,)
    log_q: np.ndarray | None = None  # (n,) log q(x) of the policy that drew each trajectory; None: unknown
    root_value: float = float("nan")

    def __post_init__(self) -> None:
        n, S = len(self.lengths), int(np.sum(self.lengths))
        if len(self.key.encode()) > KEY_BYTES:
            raise ValueError(f"prompt key longer than {KEY_BYTES} bytes: {self.key[:60]}...")
        for name in ("actions", "log_prior", "values", "visits"):
            value = getattr(self, name)
            if value is not None and len(value) != S:
                raise ValueError(f"prompt {self.key!r}: `{name}` has {len(value)} steps, lengths sum to {S}")
        for name in ("reward", "source", "reward_task", "reward_spectral", "log_q"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"prompt {self.key!r}: `{name}` has {len(value)} rows for {n} trajectories")

    def columns(self) -> dict[str, np.ndarray]:
        n, S = len(self.lengths), int(np.sum(self.lengths))
        nan_n = np.full(n, np.nan)
        return {
            "actions": self.actions, "log_prior": self.log_prior,
            "values": self.values if self.values is not None else np.full(S, np.nan),
            "visits": self.visits if self.visits is not None else np.zeros(S),
            "reward": self.reward, "reward_task": nan_n if self.reward_task is None else self.reward_task,
            "reward_spectral": nan_n if self.reward_spectral is None else self.reward_spectral,
            "prompt_index": np.full(n, self.task_index), "source": self.source,
            "log_q": nan_n if self.log_q is None else self.log_q,
            "prompt_tokens": self.prompt_tokens,
        }
