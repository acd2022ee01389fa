"""The amortisation result: does the hybrid (MC + F_φ) at a small budget do what MC-only does at a large one?

    python benchmarks/amortisation.py --config benchmarks/configs/amortisation.yaml [--part toy|real|all]

Part `toy` (exact, seconds): the enumerable toy of `benchmarks/evaluation/exact.py`. For MC-only MaxEnt-TS
and the hybrid with (a) a head trained with TB on trajectories of one MC-only search (seed 100)
and (b) the exact head, over budgets and seeds: total variation to π* of the `sampling: search`
draw (its exact distribution) and of the in-tree sampler, and the root-value error.

Part `real` (the forecasting task, held-out windows): for each series, up to `windows_per_series`
non-overlapping windows whose horizons tile LLMTime's test part (never harvested) from its start;
each context is the `context_length` steps before its horizon. Window `k` of a series is labelled
`<series>+<k·horizon>` (the first keeps the bare series name). Rows: base sampling, best-of-N, MCTS-UCT, DTS, SMC,
twisted SMC, pure F_φ, MC-only MaxEnt-TS at every budget and the hybrid at every budget, with
CRPS, scaled MAE, Spec-W1, the samples' mean reward, the root value's error against MC-only at
the largest budget, NFE and wall time. The amortisation factor is `reference / b*`, b* the
smallest hybrid budget whose mean sample reward is at least MC-only's at the reference budget
(mean over windows); its interval comes from a bootstrap over windows. MC-only at the reference
budget need not be near π*: `benchmarks/target_reference.py` scores the same rows against an
importance-sampling estimate of π*'s mean reward and log Z / λ.

Writes `<output_dir>/toy.csv|png|md`, `real.csv|md` and `reward_vs_rollouts.png`. `real.csv` is
rewritten after every window; `--resume` keeps its rows and runs only the missing ones.
The parts' code is in `benchmarks.evaluation` (`amortisation_toy`, `amortisation_real`, `amortisation_stats`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.evaluation.amortisation_real import IN_TREE, RESAMPLED, RealPart, method_means, real_summary, run_real
from benchmarks.evaluation.amortisation_stats import (
    amortisation_factor,
    ess_ratios,
    is_log_z_errors,
    plot_curves,
    plot_ess,
)
from benchmarks.evaluation.amortisation_toy import ToyPart, run_toy, toy_summary
from benchmarks.evaluation.tables import read_typed_rows, write_summary
from sadt.cli import CommandParser, run_command
from sadt.config import load_config

ROOT_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AmortisationConfig:
    output_dir: str = "benchmarks/results/amortisation"
    toy: ToyPart = field(default_factory=ToyPart)
    real: RealPart = field(default_factory=RealPart)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT_DIR / "benchmarks/configs/amortisation.yaml")
    parser.add_argument("--part", choices=("toy", "real", "all"), default="all")
    parser.add_argument("--summarise", action="store_true", help="rebuild real.md and the plot from real.csv")
    parser.add_argument("--head-rows-only", nargs="?", type=Path, const=True, metavar="REAL_CSV",
                        help="re-run only the rows that read the head; take the others from REAL_CSV (default: the "
                             "output_dir's real.csv), e.g. another head's run on the same windows")
    parser.add_argument("--resume", action="store_true",
                        help="keep every row of the output_dir's real.csv and run only the missing ones")
    args = parser.parse_args(argv)
    if args.resume and args.head_rows_only:
        parser.error("--resume and --head-rows-only both choose the rows to keep: give one")
    config = load_config(args.config, AmortisationConfig)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = f"# Amortisation benchmark ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)\n"
    if args.part in ("toy", "all"):
        write_summary(out / "toy.md", [header, "## Exact toy\n", toy_summary(run_toy(config.toy, out))])
    if args.part in ("real", "all"):
        if args.summarise:
            rows = read_typed_rows(out / "real.csv")
        else:
            reference = out / "real.csv" if args.head_rows_only is True or args.resume else args.head_rows_only
            if reference is not None and not reference.is_file():
                parser.error(f"--{'resume' if args.resume else 'head-rows-only'} needs an earlier run's rows: "
                             f"no file {reference}")
            keep = read_typed_rows(reference) if reference is not None else None
            rows = run_real(config.real, out, keep, keep_head_rows=args.resume)
        plot_curves(rows, out / "reward_vs_rollouts.png", np.random.default_rng(0), config.real.bootstrap)
        factors = []
        if config.real.search_sampler:
            factors.append(f"Amortisation factor (sampling: search): "
                           f"{amortisation_factor(rows, config.real, np.random.default_rng(0))}")
        for suffix in (IN_TREE, RESAMPLED):
            if any(r["curve"].endswith(suffix) for r in rows):
                factors.append(f"\nAmortisation factor (samples {suffix.strip()}): "
                               f"{amortisation_factor(rows, config.real, np.random.default_rng(0), suffix)}")
        if config.real.in_tree and all(np.isfinite(r.get("draws_ess", np.nan)) for r in rows
                                       if r["curve"].endswith(RESAMPLED)):
            ratios = ess_ratios(rows, config.real, np.random.default_rng(0))
            plot_ess(rows, config.real, ratios["factor"], out / "ess_vs_rollouts.png", np.random.default_rng(0))
            factors.append(f"\nEffective samples of the draws (ratios, geometric mean [95% CI] over windows; "
                           f"plot: ess_vs_rollouts.png): {ratios}")
        if any(r["curve"].endswith(RESAMPLED) for r in rows):
            factors.append(f"\nIS log Z error against maxent_ts@{config.real.budgets[-1]} (mean [95% CI] over "
                           f"windows): {is_log_z_errors(rows, config.real, np.random.default_rng(0))}")
        write_summary(out / "real.md", [header, "## Mean over the held-out windows\n", method_means(rows), "",
                                             "## Held-out windows\n", real_summary(rows), "", *factors])
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
