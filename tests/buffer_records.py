"""Deterministic prompt records for buffer tests, and a writer to kill (`python tests/buffer_records.py PATH`)."""

from __future__ import annotations

import sys

import numpy as np

from data.buffer import BufferWriter, PromptRecord

FINGERPRINT = "test-lm-0001"
META = {"lam": 2.0, "gamma": 1.0, "codec": {"precision": 3}}


def make_record(index: int, n_traj: int = 5) -> PromptRecord:
    """Record `index` is always the same arrays, so a reader can check any committed prompt."""
    rng = np.random.default_rng(index)
    lengths = rng.integers(3, 40, size=n_traj)
    S = int(lengths.sum())
    return PromptRecord(
        key=f"series=toy/window={index}/seed=0",
        task_index=index,
        prompt_tokens=rng.integers(0, 50000, size=rng.integers(5, 30)),
        lengths=lengths,
        actions=rng.integers(0, 12, size=S),
        log_prior=-rng.random(S).astype(np.float32),
        values=rng.normal(size=S).astype(np.float32),
        visits=rng.integers(1, 100, size=S),
        reward=rng.normal(size=n_traj),
        reward_task=rng.normal(size=n_traj),
        reward_spectral=rng.random(n_traj),
        source=rng.integers(0, 3, size=n_traj),
        root_value=float(rng.normal()),
    )


if __name__ == "__main__":  # append records forever; the test kills this process
    with BufferWriter(sys.argv[1], FINGERPRINT, META) as writer:
        index = len(writer.done_keys())
        while True:
            writer.append(make_record(index))
            index += 1
            if index == 3:
                print("ready", flush=True)
