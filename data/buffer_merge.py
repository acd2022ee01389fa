"""Merging buffer shards: one file of virtual datasets over the shards' committed rows (nothing copied).

    python -m data.buffer_cli merge OUT SHARD...
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from data.buffer import (
    ALL_FIELDS,
    SCHEMA_VERSION,
    BufferError,
    check_attrs,
    committed_sizes,
    reading,
    refuse_different_settings,
)


def check_merge_paths(shards: Sequence[str | Path], out: Path) -> None:
    """Refuse an output that exists (merge never overwrites) or that is one of the inputs, and a shard
    named twice, before anything is read or written."""
    resolved = [Path(s).resolve() for s in shards]
    if out.resolve() in resolved:
        raise BufferError(f"merge output {out} is also one of its inputs: the merged file would point at itself")
    if out.exists():
        raise BufferError(f"merge output {out} exists: merge never overwrites a buffer; remove it or pick a new name")
    twice = sorted({str(s) for s, r in zip(shards, resolved) if resolved.count(r) > 1})
    if twice:
        raise BufferError(f"shard {twice[0]} is given more than once")
    missing = [str(s) for s in shards if not Path(s).is_file()]
    if missing:
        raise BufferError(f"no such shard file: {missing[0]}")


STORED = ("prompt_traj_end", "log_q")  # stored for real in the merged file, not views


def merge(shards: Sequence[str | Path], out: str | Path) -> Path:
    """One file whose datasets are virtual views over the shards' committed rows (nothing copied).

    `prompt_traj_end` is recomputed for the concatenation and stored for real (one int per prompt), and so is
    `log_q` (one float per trajectory; NaN from schema-1 shards, which lack it). The shards must share LM and
    defining settings; keep them beside the merged file (it points at them).
    """
    out = Path(out)
    if not shards:
        raise BufferError("merge needs at least one shard")
    check_merge_paths(shards, out)
    metas, sizes, fingerprints, action_types = [], [], set(), set()
    holder: dict[bytes, str] = {}  # prompt key -> the shard that holds it
    for shard in shards:
        with reading(shard) as f:
            metas.append(check_attrs(f, Path(shard)))
            if len(metas) > 1:
                refuse_different_settings(metas[0], metas[-1], f"cannot merge: {shards[0]} has",
                                          f"{shard} has")
            sizes.append(committed_sizes(f))
            for key in f["prompt_keys"][: sizes[-1]["prompt_keys"]]:
                if key in holder:
                    raise BufferError(f"prompt {key.decode()!r} is in both {holder[key]} and {shard}: merging "
                                      f"would store its trajectories twice; merge each shard once")
                holder[key] = str(shard)
            fingerprints.add(str(f.attrs["lm_fingerprint"]))
            action_types.add(f["actions"].dtype.str)
            ends = f["prompt_traj_end"][: sizes[-1]["prompt_traj_end"]]
            sizes[-1]["_ends"] = ends
            n = sizes[-1]["lengths"]
            sizes[-1]["_log_q"] = f["log_q"][:n] if "log_q" in f else np.full(n, np.nan)
    if len(fingerprints) != 1:
        raise BufferError(f"cannot merge shards of different LMs: {sorted(fingerprints)}")
    if len(action_types) != 1:
        raise BufferError(f"cannot merge shards whose actions are stored as different types: {sorted(action_types)}")
    tmp = out.with_name(out.name + ".merging")
    with h5py.File(tmp, "w", libver="latest") as dst:
        for name, dtype in {**ALL_FIELDS, "actions": np.dtype(action_types.pop())}.items():
            if name in STORED:
                continue
            total = sum(s[name] for s in sizes)
            layout = h5py.VirtualLayout(shape=(total,), dtype=dtype)
            start = 0
            for shard, size in zip(shards, sizes):
                if size[name]:
                    source = h5py.VirtualSource(os.path.relpath(shard, out.parent), name, shape=(size[name],))
                    layout[start : start + size[name]] = source[: size[name]]
                start += size[name]
            dst.create_virtual_dataset(name, layout)
        offsets = np.cumsum([0] + [s["lengths"] for s in sizes[:-1]])
        ends = np.concatenate([s["_ends"] + off for s, off in zip(sizes, offsets)]) if sizes else np.zeros(0)
        dst.create_dataset("prompt_traj_end", data=ends.astype(np.int64), maxshape=(None,))
        dst.create_dataset("log_q", data=np.concatenate([s["_log_q"] for s in sizes]), maxshape=(None,))
        dst.attrs["schema_version"] = SCHEMA_VERSION
        dst.attrs["lm_fingerprint"] = fingerprints.pop()
        dst.attrs["meta"] = json.dumps({**metas[0], "merged_from": [str(s) for s in shards]}, sort_keys=True)
    os.replace(tmp, out)
    return out
