"""A LightningDataModule over one or more HDF5 trajectory buffers, split by prompt.

Validation prompts are the `val_fraction` of prompt keys with the smallest hash (at least one when
there are two or more prompts), so validation measures generalisation to windows the head never
trained on, and a prompt's side of the split depends only on its key and the prompt count.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from data.buffer import Buffer, check_attrs, iter_sources, open_h5, read_buffer


class PromptTrajectories(Dataset):
    """Trajectories as dicts carrying their prompt tokens (several buffers may be mixed)."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(items: list[dict]) -> dict:
    """Keep prompts as tuples (the module groups by them); pad per-step fields (B, T)."""
    lengths = torch.tensor([len(x["actions"]) for x in items])
    T = int(lengths.max())
    actions = torch.full((len(items), T), -1, dtype=torch.long)
    values = torch.full((len(items), T), float("nan"))
    for i, x in enumerate(items):
        actions[i, : len(x["actions"])] = torch.as_tensor(x["actions"], dtype=torch.long)
        values[i, : len(x["values"])] = torch.as_tensor(x["values"], dtype=torch.float32)
    return {
        "prompts": [x["prompt"] for x in items],
        "prompt_index": torch.tensor([x["prompt_id"] for x in items]),
        "actions": actions,
        "mask": torch.arange(T)[None] < lengths[:, None],
        "reward": torch.tensor([x["reward"] for x in items], dtype=torch.float32),
        "source": torch.tensor([x["source"] for x in items]),
        "tree_values": values,
    }


def _items(buffer: Buffer, buffer_id: int, sources: list[int] | None) -> list[dict]:
    a = buffer.arrays
    prompt_tokens = np.split(a["prompt_tokens"], np.cumsum(a["prompt_lengths"])[:-1])
    row_of_task = {int(t): p for p, t in enumerate(a["prompt_task_index"])}
    keys = buffer.prompt_keys()
    items = []
    for i in range(buffer.n_trajectories):
        if sources is not None and int(a["source"][i]) not in sources:
            continue
        row = row_of_task[int(a["prompt_index"][i])]
        trajectory = buffer.trajectory(i)
        items.append({
            "prompt": tuple(int(t) for t in prompt_tokens[row]), "key": keys[row],
            "prompt_id": buffer_id * 1_000_000 + row, "actions": trajectory["actions"].astype(np.int64),
            "values": trajectory["values"], "visits": trajectory["visits"], "reward": float(a["reward"][i]),
            "source": int(a["source"][i]),
        })
    return items


class BufferDataModule(pl.LightningDataModule):
    """Trajectories from HDF5 buffers, split into train and validation by prompt.

    Args:
        buffers: paths of harvested buffers (`python -m search.harvest`).
        batch_size: trajectories per step.
        val_fraction: share of prompts held out for validation (by key hash).
        sources: keep only these trajectory sources (e.g. ["tree_path"]); None keeps all.
        lm_fingerprint: if given, every buffer must come from this LM.
    """

    def __init__(
        self, buffers: list[str], batch_size: int = 32, val_fraction: float = 0.25,
        sources: list[str] | None = None, lm_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        if not buffers:
            raise ValueError("BufferDataModule needs at least one buffer path")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}")
        self.paths, self.batch_size, self.val_fraction = buffers, batch_size, val_fraction
        self.sources = None if sources is None else iter_sources(sources)
        self.lm_fingerprint = lm_fingerprint
        self.meta: dict = {}

    def check(self) -> None:
        """Every buffer exists and is a readable S-ADT buffer of this LM: headers only, before any run
        directory is made (`trainers.fit` calls it first, so bad input leaves nothing behind)."""
        for path in self.paths:
            with open_h5(path) as f:
                check_attrs(f, Path(path), self.lm_fingerprint)

    def setup(self, stage: str | None = None) -> None:
        items = []
        for buffer_id, path in enumerate(self.paths):
            buffer = read_buffer(path, self.lm_fingerprint)
            self.meta = self.meta or buffer.meta
            items += _items(buffer, buffer_id, self.sources)
        if not items:
            raise ValueError(f"no trajectories in {self.paths} (after filtering by source)")
        keys = sorted({x["key"] for x in items}, key=lambda k: zlib.crc32(k.encode()))
        n_val = 0 if self.val_fraction == 0 or len(keys) < 2 else max(1, round(self.val_fraction * len(keys)))
        val_keys = set(keys[:n_val])
        is_val = [x["key"] in val_keys for x in items]
        self.train_set = PromptTrajectories([x for x, v in zip(items, is_val) if not v])
        self.val_set = PromptTrajectories([x for x, v in zip(items, is_val) if v])
        if len(self.train_set) == 0:
            raise ValueError(f"every prompt fell into validation (val_fraction={self.val_fraction}); lower it")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, collate_fn=collate)
