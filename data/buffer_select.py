"""A replay buffer of each prompt's best draws, taken from earlier buffers (on-policy rounds, `trainers.rounds`).

Hu et al. (ICLR 2024) replay each prompt's highest-reward samples beside the fresh on-policy ones; the balance
losses are minimised at P_F = π* whatever policy drew the data, so replaying them only says where to look.
Every kept trajectory is copied whole (its actions, per-step log p, exact log q, reward), and a sequence drawn in
several rounds is kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.buffer import STEP_FIELDS, BufferError, BufferWriter, read_buffer, refuse_different_settings
from data.prompt_record import PromptRecord


def best_draws(sources: Sequence[str | Path], out: str | Path, per_prompt: int) -> Path:
    """Write to `out` each prompt's `per_prompt` highest-reward distinct trajectories over every buffer of
    `sources` (which must share their defining settings); `out` is rewritten whole, never appended to."""
    if per_prompt < 1 or not sources:
        raise ValueError(f"best_draws needs sources and per_prompt >= 1, got {len(sources)} and {per_prompt}")
    buffers = _read_alike(sources)
    records = [_record(key, _best(draws, per_prompt)) for key, draws in _by_prompt(buffers).items()]
    return _write(records, out, buffers[0])


def prompts_draws(source: str | Path, out: str | Path, keys: Sequence[str]) -> Path:
    """Write to `out` every draw of the prompts `keys` in the buffer `source` (a prompt's draws alone, e.g. to fit
    one window: `benchmarks.head_capacity`); `out` is rewritten whole. Draws without a log q (p's) are copied."""
    (buffer,) = _read_alike([source])
    by_prompt = _by_prompt([buffer])
    missing = [k for k in keys if k not in by_prompt]
    if missing:
        raise ValueError(f"{source}: no prompt {missing[0]!r} (it has {len(by_prompt)} prompts)")
    return _write([_record(key, by_prompt[key], need_log_q=False) for key in keys], out, buffer)


def _read_alike(sources: Sequence[str | Path]) -> list:
    buffers = [read_buffer(path) for path in sources]
    for other in buffers[1:]:
        refuse_different_settings(buffers[0].meta, other.meta, f"{buffers[0].path} was written with",
                                  f"{other.path} with")
    return buffers


def _by_prompt(buffers: list) -> dict[str, list[tuple[float, tuple, object, int]]]:
    """Each prompt's draws over `buffers` as (reward, actions, buffer, index), in the buffers' order."""
    by_prompt: dict[str, list[tuple[float, tuple, object, int]]] = {}
    for buffer in buffers:
        keys, rows = buffer.prompt_keys(), buffer.prompt_rows
        for i in range(buffer.n_trajectories):
            trajectory = buffer.trajectory(i)
            by_prompt.setdefault(keys[rows[i]], []).append(
                (float(trajectory["reward"]), tuple(trajectory["actions"].tolist()), buffer, i))
    return by_prompt


def _write(records: list[PromptRecord], out: str | Path, like) -> Path:
    """`records` into a new buffer with `like`'s LM and settings, appearing whole or not at all."""
    out = Path(out)
    partial, lock = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.lock")
    partial.unlink(missing_ok=True)
    try:
        with BufferWriter(partial, like.lm_fingerprint, like.meta) as writer:
            for record in records:
                writer.append(record)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
    return out


def _best(draws: list[tuple], per_prompt: int) -> list[tuple]:
    """The `per_prompt` highest rewards among distinct action sequences (the first seen of equal ones)."""
    seen, kept = set(), []
    for draw in sorted(draws, key=lambda d: -d[0]):
        if draw[1] not in seen:
            seen.add(draw[1])
            kept.append(draw)
        if len(kept) == per_prompt:
            break
    return kept


def _record(key: str, draws: list[tuple], need_log_q: bool = True) -> PromptRecord:
    """One prompt's kept trajectories as a record, copied from their buffers (replay needs their log q)."""
    first_buffer, first = draws[0][2], draws[0][3]
    row = first_buffer.prompt_rows[first]
    trajectories = [buffer.trajectory(i) for _, _, buffer, i in draws]
    if need_log_q and any(np.isnan(t["log_q"]) for t in trajectories):
        raise BufferError(f"prompt {key!r}: a draw without its log q (a buffer of schema 1); replay needs "
                          f"draws whose proposal probability is known")
    steps = {name: np.concatenate([t[name] for t in trajectories]) for name in STEP_FIELDS}
    prompt_end = np.cumsum(first_buffer.arrays["prompt_lengths"])
    tokens = first_buffer.arrays["prompt_tokens"][prompt_end[row] - first_buffer.arrays["prompt_lengths"][row]:
                                                  prompt_end[row]]

    def column(name: str) -> np.ndarray:
        return np.array([t[name] for t in trajectories])

    return PromptRecord(
        key=key, task_index=int(first_buffer.arrays["prompt_task_index"][row]), prompt_tokens=tokens,
        lengths=np.array([len(t["actions"]) for t in trajectories]), actions=steps["actions"],
        log_prior=steps["log_prior"], values=steps["values"], visits=steps["visits"], reward=column("reward"),
        source=column("source"), reward_task=column("reward_task"), reward_spectral=column("reward_spectral"),
        log_q=column("log_q"), root_value=float(first_buffer.arrays["prompt_root_value"][row]),
    )
