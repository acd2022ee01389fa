"""What a value costs the search: MaxEnt-TS wall time per value at equal rollouts, one held-out window.

    python benchmarks/value_overhead.py --config benchmarks/configs/amortisation_lam15_soft.yaml \
        --heads checkpoints/heads/soft_ahead_lam15 checkpoints/heads/digit_ahead_lam15 partial_reward

Each value is timed in the same process against MC-only MaxEnt-TS (no head) with the search
settings of the config's hybrid rows (`benchmarks/amortisation.py`; its `head` is ignored), so
the ratio is the value's overhead: the head's MLP, and for reward-aware heads the partial reward
R(s·a) or look-ahead reward R⁺(s·a) of every live row at every step. Prints a Markdown table of
wall seconds and ratios.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from benchmarks.amortisation import AmortisationConfig
from benchmarks.evaluation.amortisation_real import heldout_windows
from sadt.cli import CommandParser, run_command
from sadt.codec import Codec
from sadt.config import load_config, to_dict
from sadt.head_io import load_value_head
from sadt.lm.base_model import lm_fingerprint, load_base_lm
from search.config import search_config
from search.forecast_task import ForecastTask

ROOT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="AirPassengers")
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--config", default="benchmarks/configs/amortisation.yaml")
    parser.add_argument("--heads", nargs="+", required=True, help="head folders, partial_reward or look_ahead_reward")
    args = parser.parse_args(argv)
    part = load_config(args.config, AmortisationConfig).real
    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    _, context, _ = heldout_windows(args.series, part)[0]
    task = ForecastTask.build(codec, context, part.horizon)
    mc = search_config(lam=part.lam, batch_size=part.batch_size, n_samples=part.n_samples, seed=part.seed,
                       progress=False, n_rollouts=args.rollouts, sampling="search")
    hybrid = dataclasses.replace(mc, hybrid="visits", hybrid_n0=part.hybrid_n0, hybrid_offset=part.hybrid_offset)
    runs = [("MC-only", mc, None)]
    for name in args.heads:
        head = name if not Path(name).is_dir() else load_value_head(name, lm_fingerprint(), to_dict(codec.config))[0]
        runs.append((name, hybrid, head))
    task.search(lm, dataclasses.replace(mc, n_rollouts=2))  # warm-up: first-call allocations
    print(f"{args.series}, {args.rollouts} rollouts, batch {part.batch_size}, hybrid n0 {part.hybrid_n0}\n")
    print("| value | wall s | × MC-only |\n|---|---|---|")
    baseline = None
    for name, config, head in runs:
        start = time.perf_counter()
        task.search(lm, config, head)
        wall = time.perf_counter() - start
        baseline = baseline or wall
        print(f"| {name} | {wall:.1f} | {wall / baseline:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
