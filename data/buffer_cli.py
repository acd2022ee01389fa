"""Buffer commands: `python -m data.buffer_cli inspect FILE...` and `... merge OUT SHARD...`."""

from __future__ import annotations

import sys

import numpy as np

from data.buffer import SOURCES, BufferError, read_buffer
from data.buffer_merge import merge
from sadt.cli import CommandParser


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
    parser = CommandParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print counts, sources, lengths and a reward histogram")
    inspect.add_argument("paths", nargs="+")
    join = commands.add_parser("merge", help="one virtual-dataset file over shards (no copy)")
    join.add_argument("out")
    join.add_argument("shards", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            print(f"merged {len(args.shards)} shards into {merge(args.shards, args.out)}")
            print(summary(args.out))
        else:
            for path in args.paths:
                print(summary(path))
    except (BufferError, OSError) as err:  # OSError: a file h5py cannot open (truncated, not HDF5)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
