"""Summarise a buffer: `python -m data.inspect_buffer harvest.h5`."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from data.buffer import SOURCES, BufferError, read_buffer


def summary(path: str) -> str:
    buffer = read_buffer(path)
    a = buffer.arrays
    lines = [
        f"{path}: {buffer.n_prompts} prompts, {buffer.n_trajectories} trajectories, {a['actions'].size} steps",
        f"LM {buffer.lm_fingerprint}; lam {buffer.meta.get('lam')}, gamma {buffer.meta.get('gamma')}",
    ]
    for name, code in SOURCES.items():
        lines.append(f"  source {name:<12} {int(np.sum(a['source'] == code))}")
    if buffer.n_trajectories:
        lengths, reward = a["lengths"], a["reward"]
        lines.append(f"lengths: min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
        counts, edges = np.histogram(reward, bins=10)
        lines.append(f"reward: mean {reward.mean():.4f}, sd {reward.std():.4f}")
        width = max(counts.max(), 1)
        for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
            lines.append(f"  [{lo:9.4f}, {hi:9.4f}) {'#' * int(40 * count / width):<40} {count}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    try:
        for path in args.paths:
            print(summary(path))
    except BufferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
