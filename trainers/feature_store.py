"""The frozen LM's features of each trajectory, kept on disk across fits.

A fit reads, for every state along a trajectory, the LM's last hidden state h(s_t) and its logits over
the action tokens. On a large buffer that forward is almost all of a fit's first epoch (27,600 draws
of 60 tokens: ~3 h on one CPU core), and it is the same for every head, λ and subset of prompts. The
store keeps one safetensors file per (prompt, trajectory) under the LM's fingerprint, so a learning
curve or a second head pays for it once, and a killed fit keeps everything it had written (each file
is written to a temporary name and renamed: never half-written).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

NAMES = ("hidden", "logits", "support")  # what a file holds, in order (support: a text task's top-k token ids)


class FeatureStore:
    """(prompt tokens, trajectory actions) -> (hidden (T, H), logits (T, A)), float32, on disk; a text task's
    top-k features add `support` (T, k) (`trainers.features`; kept in their own store, see `LMFeatures.attach`).

    Args:
        root: the store's folder (shared by fits; one subfolder per LM).
        lm_fingerprint: the LM the features come from: another LM's features are never read.
    """

    def __init__(self, root: str | Path, lm_fingerprint: str) -> None:
        self.dir = Path(root) / lm_fingerprint

    def _path(self, key: tuple[tuple[int, ...], tuple[int, ...]]) -> Path:
        prompt, actions = key
        tokens = np.array([*prompt, -1, *actions], dtype=np.int64)  # -1: where the prompt ends
        digest = hashlib.sha1(tokens.tobytes()).hexdigest()
        return self.dir / digest[:2] / f"{digest}.safetensors"

    def get(self, key: tuple) -> tuple[torch.Tensor, ...] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        tensors = load_file(path)
        return tuple(tensors[name] for name in NAMES if name in tensors)

    def put(self, key: tuple, *features: torch.Tensor) -> None:
        """Store (hidden, logits[, support]) under `key`."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        save_file({name: x.contiguous() for name, x in zip(NAMES, features)}, partial)
        os.replace(partial, path)  # atomic: a reader sees the whole file or none
