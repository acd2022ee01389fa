"""The same MaxEnt-TS search on the torch and the MLX backend, same weights, in one run.

    python benchmarks/mlx_vs_torch.py --prompt 128 --new-tokens 32 --batch 32 --rollouts 128

Both run the fixed-length 12-action grammar and the cheap reward of `search_throughput.py`, so the
LM dominates. On Linux MLX runs on the CPU (`mlx[cpu]`); Apple-silicon numbers need Apple
hardware (Metal, unified memory), where MLX is the point of the port.
"""

from __future__ import annotations

import platform
import sys

import mlx.core as mx
import torch

from benchmarks.search_throughput import prompt_ids, run_maxent, workload_parser
from sadt.cli import run_command
from sadt.codec import Codec
from sadt.lm.base_model import load_base_lm


def main(argv: list[str] | None = None) -> int:
    args = workload_parser(__doc__.splitlines()[0], batch=32, rollouts=128).parse_args(argv)

    rows = {}
    for backend in ("torch", "mlx"):
        lm, tokenizer = load_base_lm(backend=backend)
        codec = Codec(tokenizer)
        ids = prompt_ids(codec, args.prompt)
        result = run_maxent(lm, codec, ids, args.batch, args.new_tokens, args.rollouts)
        wall = result.wall_s
        rows[backend] = (wall, result.n_rollouts / wall, (result.nfe_tokens - args.prompt) / wall)

    print(f"\nCPU ({platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"mlx {mx.__version__} ({mx.default_device()}), float32, prompt {args.prompt}, "
          f"{args.new_tokens} tokens per rollout, batch {args.batch}, {args.rollouts} rollouts\n")
    print("| backend | wall s | rollouts/s | tokens/s | rollouts/s vs torch |")
    print("|---|---|---|---|---|")
    for backend, (wall, rollouts_s, tokens_s) in rows.items():
        print(f"| {backend} | {wall:.1f} | {rollouts_s:.2f} | {tokens_s:.0f} | {rollouts_s / rows['torch'][1]:.2f} |")

    return 0

if __name__ == "__main__":
    sys.exit(run_command(main))
