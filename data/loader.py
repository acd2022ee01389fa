"""Torch access to a buffer: a `Dataset` of trajectories and a collate that pads them into batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.buffer import Buffer, iter_sources


class TrajectoryDataset(Dataset):
    """Trajectories of a buffer, optionally filtered by source and reward.

    Args:
        buffer: from `data.buffer.read_buffer`.
        sources: keep only these sources (names from `data.buffer.SOURCES`); None keeps all.
        min_reward, max_reward: keep rewards in [min, max]; None leaves that side open.
    """

    def __init__(
        self, buffer: Buffer, sources: Sequence[str] | None = None,
        min_reward: float | None = None, max_reward: float | None = None,
    ) -> None:
        self.buffer = buffer
        self.offsets = buffer.offsets
        self.prompt_rows = buffer.prompt_rows  # `prompt_index` of a batch: the prompt's row, unique per prompt
        keep = np.ones(buffer.n_trajectories, dtype=bool)
        if sources is not None:
            keep &= np.isin(buffer.arrays["source"], iter_sources(sources))
        reward = buffer.arrays["reward"]
        if min_reward is not None:
            keep &= reward >= min_reward
        if max_reward is not None:
            keep &= reward <= max_reward
        self.indices = np.flatnonzero(keep)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.buffer.trajectory(int(self.indices[i]))
        return {
            "actions": torch.as_tensor(item["actions"], dtype=torch.long),
            "log_prior": torch.as_tensor(item["log_prior"], dtype=torch.float32),
            "values": torch.as_tensor(item["values"], dtype=torch.float32),
            "visits": torch.as_tensor(item["visits"], dtype=torch.long),
            "reward": torch.tensor(float(item["reward"]), dtype=torch.float64),
            "prompt_index": torch.tensor(int(self.prompt_rows[self.indices[i]])),
            "source": torch.tensor(int(item["source"])),
        }


    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        """A whole padded batch gathered from the flat arrays at once (DataLoader calls this)."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        a = self.buffer.arrays
        lengths = a["lengths"][rows].astype(np.int64)
        T = int(lengths.max()) if rows.size else 0
        mask = np.arange(T)[None] < lengths[:, None]  # (B, T)
        gather = np.where(mask, self.offsets[rows][:, None] + np.arange(T)[None], 0)
        batch = {"lengths": torch.from_numpy(lengths), "mask": torch.from_numpy(mask)}
        for name, pad, dtype in (("actions", -1, torch.long), ("log_prior", 0.0, torch.float32),
                                 ("values", np.nan, torch.float32), ("visits", 0, torch.long)):
            batch[name] = torch.from_numpy(np.where(mask, a[name][gather], pad)).to(dtype)
        batch["reward"] = torch.from_numpy(a["reward"][rows].astype(np.float64))
        batch["prompt_index"] = torch.from_numpy(self.prompt_rows[rows].astype(np.int64))
        batch["source"] = torch.from_numpy(a["source"][rows].astype(np.int64))
        return batch


def pad_collate(items: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack trajectories: per-step fields (B, T) right-padded (actions with -1), `mask` (B, T).

    A dict is already a batch (from `TrajectoryDataset.__getitems__`) and passes through.
    """
    if isinstance(items, dict):
        return items
    lengths = torch.tensor([len(x["actions"]) for x in items])
    T = int(lengths.max()) if len(items) else 0
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
    batch = {"lengths": lengths, "mask": mask}
    for name, pad in (("actions", -1), ("log_prior", 0.0), ("values", float("nan")), ("visits", 0)):
        out = torch.full((len(items), T), pad, dtype=items[0][name].dtype)
        for row, x in enumerate(items):
            out[row, : len(x[name])] = x[name]
        batch[name] = out
    for name in ("reward", "prompt_index", "source"):
        batch[name] = torch.stack([x[name] for x in items])
    return batch


def trajectory_loader(dataset: TrajectoryDataset, batch_size: int = 64, shuffle: bool = True, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=pad_collate, **kwargs)
