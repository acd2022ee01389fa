"""Write and read throughput of the HDF5 buffer.

    python benchmarks/buffer_throughput.py --trajectories 100000 --length 100 --per-prompt 100

Writes `trajectories` synthetic trajectories of `length` steps (prompts of `per-prompt`
trajectories, each committed as the harvester does), then reads the committed part back
(`read_buffer`) and iterates padded torch batches of 256. Prints one Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.buffer import BufferWriter, PromptRecord, read_buffer
from data.loader import TrajectoryDataset, trajectory_loader
from sadt.cli import CommandParser, positive_int, run_command


def record(i: int, per_prompt: int, length: int, rng: np.random.Generator) -> PromptRecord:
    S = per_prompt * length
    return PromptRecord(
        key=f"bench/{i}", task_index=i, prompt_tokens=rng.integers(0, 49152, size=256),
        lengths=np.full(per_prompt, length), actions=rng.integers(0, 12, size=S),
        log_prior=-rng.random(S, dtype=np.float32), values=rng.normal(size=S).astype(np.float32),
        visits=rng.integers(1, 50, size=S), reward=rng.normal(size=per_prompt),
        reward_task=np.zeros(per_prompt), reward_spectral=rng.random(per_prompt),
        source=np.zeros(per_prompt, dtype=np.int8), root_value=0.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=positive_int, default=100_000)
    parser.add_argument("--length", type=positive_int, default=100)
    parser.add_argument("--per-prompt", type=positive_int, default=100)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n_prompts = args.trajectories // args.per_prompt
    records = [record(i, args.per_prompt, args.length, rng) for i in range(n_prompts)]
    payload_mb = sum(
        sum(np.asarray(v).nbytes for v in r.columns().values()) + r.lengths.nbytes for r in records
    ) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        start = time.perf_counter()
        with BufferWriter(path, "bench", {"lam": 1.0}) as writer:
            for r in records:
                writer.append(r)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 2**20
        start = time.perf_counter()
        buffer = read_buffer(path)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        batches = sum(1 for _ in trajectory_loader(TrajectoryDataset(buffer), batch_size=256, shuffle=True))
        loader_s = time.perf_counter() - start
    n = n_prompts * args.per_prompt
    print(f"{n} trajectories x {args.length} steps, {n_prompts} commits, payload {payload_mb:.0f} MiB in memory\n")
    print("| operation | seconds | trajectories/s | MiB/s (payload) |")
    print("|---|---|---|---|")
    print(f"| write (commit per prompt) | {write_s:.2f} | {n / write_s:,.0f} | {payload_mb / write_s:.0f} |")
    print(f"| read_buffer (all committed) | {read_s:.2f} | {n / read_s:,.0f} | {payload_mb / read_s:.0f} |")
    print(f"| padded torch batches of 256 ({batches}) | {loader_s:.2f} | {n / loader_s:,.0f} | "
          f"{payload_mb / loader_s:.0f} |")
    print(f"\nfile size {size_mb:.1f} MiB = {1024 * size_mb / n:.2f} KiB per trajectory (lzf)")

    return 0

if __name__ == "__main__":
    sys.exit(run_command(main))
