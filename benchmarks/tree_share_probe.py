"""Where a tree's importance weight comes from, iteration by iteration: one held-out window of a samplers config,
the named tree sampler run to a budget with its defensive share ε logged, and at each budget the draws' ESS split by
the component that most likely made them (responsibility ρ > 0.5: the defensive one), beside i.i.d. p's ESS from
the run's cached prior draws (issue 34; BENCHMARKS.md, the 100k section).

    python -m benchmarks.tree_share_probe Sunspots [--rule min_variance] [--budget 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from benchmarks.evaluation.draws import DrawSet
from benchmarks.samplers import SamplersConfig, benchmark_tasks
from sadt.config import load_config
from sadt.importance import effective_sample_size
from sadt.lm.base_model import load_base_lm
from search.config import search_config

BUDGETS = (2500, 10_000, 40_000, 100_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("window", help="a window label of the config (e.g. Sunspots, Wine+12)")
    parser.add_argument("--config", default="benchmarks/configs/samplers_heldout13_100k.yaml")
    parser.add_argument("--sampler", default="MaxEnt-TS ε adaptive, n0=4")
    parser.add_argument("--rule", default=None, help="override `defensive_rule` (em, min_variance)")
    parser.add_argument("--budget", type=float, default=100_000, help="LM tokens")
    parser.add_argument("--lam", type=float, default=15.0)
    args = parser.parse_args()
    config = load_config(args.config, SamplersConfig)
    spec = config.samplers[args.sampler]
    overrides = {} if args.rule is None else {"defensive_rule": args.rule}
    search_cfg = search_config(**{"method": "maxent_ts", "lam": args.lam, "seed": config.seed, "n_samples": 1,
                                  "top_k": config.top_k, **spec.search, **overrides})
    lm, tokenizer = load_base_lm(dtype=config.dtype, device=config.device)
    builders = {label: build for label, build, _ in benchmark_tasks(config, tokenizer)}
    if args.window not in builders:
        parser.error(f"window {args.window!r} is not in {args.config}: one of {sorted(builders)}")
    search = builders[args.window]().sampler(lm, dataclasses.replace(search_cfg, progress=False), None)
    start, tokens, shares = lm.stats.tokens, [], []
    while lm.stats.tokens - start < args.budget:  # as `benchmarks.evaluation.draws.tree_draws` runs it
        done = len(search.draws)
        search.iterate(search_cfg.batch_size)
        tokens += [lm.stats.tokens - start] * (len(search.draws) - done)
        shares.append(search.epsilon)
    print(f"{args.window}: {len(tokens)} draws, {len(shares)} iterations; ε after iteration",
          {i + 1: round(shares[i], 3) for i in (0, 4, 9, 19, 39, 79, len(shares) - 1) if i < len(shares)})
    prior = DrawSet.load(Path(config.output_dir) / "draws" / f"{args.window}.prior.npz").at_lam(args.lam)
    log_w = np.asarray(search.draw_log_weights)
    rho = np.array([d.responsibility for d in search.draws])
    for budget in (b for b in BUDGETS if b <= args.budget):
        n = int(np.searchsorted(tokens, budget, side="right"))
        w, defensive = log_w[:n], rho[:n] > 0.5
        normalised = np.exp(w - np.logaddexp.reduce(w))
        print(f"  {budget:>7}: tree ESS {effective_sample_size(w):6.1f} ({n} draws), i.i.d. p ESS "
              f"{effective_sample_size(prior.upto(budget).log_weights):6.1f} | defensive-made: "
              f"{defensive.mean():.2f} of draws, {normalised[defensive].sum():.2f} of weight")


if __name__ == "__main__":
    main()
