"""What the adaptive defensive share costs a search, rebuilt from every draw each iteration against running sums.

    python -m benchmarks.share_rule_cost --draws 1000 2000 3000 --batch 1 8

A search moves ε after each iteration from all its draws so far. Before 2026-12-07 the rules rebuilt their arrays
(and the variance rule its 341-point grid of log M(α)) from every `Draw` each time, O(n) an iteration and O(n²)
a search at batch 1; `search.draws.EMShare` and `MinVarianceShare` now keep them as running sums. Timed in the
same process on the same synthetic draws (log-weights N(0, 3²), ρ and ε uniform): the one-call functions on all
draws so far each iteration (the old way) against the rule fed one batch at a time, and checked to give the same
ε every iteration. Prints one Markdown row per rule, draw count and batch.
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np

from sadt.cli import CommandParser, positive_int, run_command
from search.draws import Draw, EMShare, MinVarianceShare, adapted_defensive_share, min_variance_defensive_share

RULES = {"em": (adapted_defensive_share, EMShare), "min_variance": (min_variance_defensive_share, MinVarianceShare)}


def synthetic_draws(n: int, seed: int = 0) -> list[Draw]:
    rng = np.random.default_rng(seed)
    return [Draw(0, float(w), float(r), float(e)) for w, r, e in
            zip(3 * rng.normal(size=n), rng.uniform(size=n), rng.uniform(0.1, 0.9, size=n))]


def time_rule(rule: str, draws: list[Draw], batch: int) -> tuple[float, float, float]:
    """Seconds for a search's ε updates, rebuilt and running, and the largest |ε difference| between them."""
    one_call, running_rule = RULES[rule]
    ends = range(batch, len(draws) + 1, batch)
    start = time.perf_counter()
    rebuilt = [one_call(draws[:end], 0.5, 4.0) for end in ends]
    rebuilt_s = time.perf_counter() - start
    start, running = time.perf_counter(), running_rule()
    kept = [running.update(draws[end - batch:end], 0.5, 4.0) for end in ends]
    running_s = time.perf_counter() - start
    return rebuilt_s, running_s, float(np.max(np.abs(np.subtract(rebuilt, kept))))


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=positive_int, nargs="+", default=[1000, 2000, 3000])
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    print("| rule | draws | batch | rebuilt each iteration (s) | running sums (s) | speed-up | max \\|Δε\\| |")
    print("|---|---|---|---|---|---|---|")
    for rule in RULES:
        for n in args.draws:
            for batch in args.batch:
                rebuilt_s, running_s, gap = time_rule(rule, synthetic_draws(n), batch)
                print(f"| {rule} | {n} | {batch} | {rebuilt_s:.2f} | {running_s:.2f} | {rebuilt_s / running_s:.1f}× "
                      f"| {gap:.1e} |")
    print(f"\n{platform.processor() or platform.machine()}, numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
