"""A LightningDataModule over one or more HDF5 trajectory buffers, split by prompt.

Validation prompts are the `val_fraction` of prompt keys with the smallest hash (at least one when
there are two or more prompts), so validation measures generalisation to windows the head never
trained on, and a prompt's side of the split depends only on its key and the prompt count.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.buffer import Buffer, check_attrs, iter_sources, read_buffer, reading


class PromptTrajectories(Dataset):
    """Trajectories as dicts carrying their prompt tokens (several buffers may be mixed)."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class PromptBatches(Sampler[list[int]]):
    """Batches of whole prompts' trajectories: each epoch shuffles the prompts (and each prompt's
    trajectories), lays them end to end and cuts the run into batches of `batch_size`.

    A batch then touches one to a few prompts and consecutive batches share them, so the frozen
    LM prefills each prompt once per epoch with a prompt cache of a few entries; shuffled batches
    touch ~one prompt per trajectory and, past the cache, re-prefill one every step (70% of a fit
    step on the generated-context harvest).
    """

    def __init__(self, prompt_ids: list[int], batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        groups: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompt_ids):
            groups.setdefault(prompt, []).append(index)
        self.groups = list(groups.values())
        self.batch_size, self.n_items = batch_size, len(prompt_ids)
        self.generator = torch.Generator().manual_seed(seed)  # advances every epoch: a new order each time

    def __len__(self) -> int:
        return math.ceil(self.n_items / self.batch_size)

    def __iter__(self):
        order = []
        for g in torch.randperm(len(self.groups), generator=self.generator).tolist():
            group = self.groups[g]
            order += [group[i] for i in torch.randperm(len(group), generator=self.generator).tolist()]
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


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
        "log_p_over_q": torch.tensor([x["log_p"] - x["log_q"] for x in items], dtype=torch.float64),
        "tree_values": values,
    }


def _items(buffer: Buffer, buffer_id: int, sources: list[int] | None) -> list[dict]:
    a = buffer.arrays
    prompt_tokens = np.split(a["prompt_tokens"], np.cumsum(a["prompt_lengths"])[:-1])
    rows = buffer.prompt_rows
    keys = buffer.prompt_keys()
    items = []
    for i in range(buffer.n_trajectories):
        if sources is not None and int(a["source"][i]) not in sources:
            continue
        row = int(rows[i])
        trajectory = buffer.trajectory(i)
        items.append({
            "prompt": tuple(int(t) for t in prompt_tokens[row]), "key": keys[row],
            "prompt_id": buffer_id * 1_000_000 + row, "actions": trajectory["actions"].astype(np.int64),
            "values": trajectory["values"], "visits": trajectory["visits"], "reward": float(a["reward"][i]),
            "source": int(a["source"][i]), "log_p": float(trajectory["log_prior"].astype(np.float64).sum()),
            "log_q": float(a["log_q"][i]),  # NaN where the drawing policy's law is unknown (trees, schema 1)
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
        batch_by_prompt: training batches of whole prompts' trajectories (`PromptBatches`), so each
            prompt is prefilled once per epoch; False shuffles trajectories across prompts.
        train_prompts: train on only this many of the training prompts (the first by key hash, so a
            smaller set is inside every larger one: a learning curve); validation is unchanged. None: all.
    """

    def __init__(
        self, buffers: list[str], batch_size: int = 32, val_fraction: float = 0.25,
        sources: list[str] | None = None, lm_fingerprint: str | None = None, batch_by_prompt: bool = False,
        train_prompts: int | None = None,
    ) -> None:
        super().__init__()
        if not buffers:
            raise ValueError("BufferDataModule needs at least one buffer path")
        if batch_size < 1:
            raise ValueError(f"data `batch_size` must be >= 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}")
        if train_prompts is not None and train_prompts < 1:
            raise ValueError(f"`train_prompts` must be >= 1 (or null for all), got {train_prompts}")
        self.paths, self.batch_size, self.val_fraction = buffers, batch_size, val_fraction
        self.sources = None if sources is None else iter_sources(sources)
        self.lm_fingerprint = lm_fingerprint
        self.batch_by_prompt, self.train_prompts = batch_by_prompt, train_prompts
        self.meta: dict = {}  # the first buffer's: the codec, λ and reward the fit reads
        self.harvest_configs: list[dict] = []  # every buffer's harvest config, in `buffers` order

    def check(self) -> None:
        """Every buffer exists and is a readable S-ADT buffer of this LM: headers only, before any run
        directory is made (`trainers.fit` calls it first, so bad input leaves nothing behind)."""
        for path in self.paths:
            with reading(path) as f:
                check_attrs(f, Path(path), self.lm_fingerprint)

    def setup(self, stage: str | None = None) -> None:
        items, self.harvest_configs = [], []  # a second setup (another stage) reads the buffers afresh
        for buffer_id, path in enumerate(self.paths):
            buffer = read_buffer(path, self.lm_fingerprint)
            self.meta = self.meta or buffer.meta
            self.harvest_configs.append(buffer.meta.get("config", {}))
            items += _items(buffer, buffer_id, self.sources)
        if not items:
            raise ValueError(f"no trajectories in {self.paths} (after filtering by source)")
        keys = sorted({x["key"] for x in items}, key=lambda k: zlib.crc32(k.encode()))
        n_val = 0 if self.val_fraction == 0 or len(keys) < 2 else max(1, round(self.val_fraction * len(keys)))
        val_keys = set(keys[:n_val])
        train_keys = set(keys[n_val:] if self.train_prompts is None else keys[n_val : n_val + self.train_prompts])
        if self.train_prompts is not None and len(train_keys) < self.train_prompts:
            raise ValueError(f"`train_prompts` {self.train_prompts}: {self.paths} hold only {len(train_keys)} "
                             f"training prompts (val_fraction {self.val_fraction})")
        self.train_set = PromptTrajectories([x for x in items if x["key"] in train_keys])
        self.val_set = PromptTrajectories([x for x in items if x["key"] in val_keys])
        if len(self.train_set) == 0:
            raise ValueError(f"every prompt fell into validation (val_fraction={self.val_fraction}); lower it")

    def train_dataloader(self) -> DataLoader:
        if self.batch_by_prompt:
            seed = int(torch.randint(2**31, ()))  # from the run's seed (seed_everything)
            batches = PromptBatches([x["prompt_id"] for x in self.train_set.items], self.batch_size, seed)
            return DataLoader(self.train_set, batch_sampler=batches, collate_fn=collate)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:  # in buffer order: already grouped by prompt
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, collate_fn=collate)
