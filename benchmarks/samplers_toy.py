"""The samplers benchmark on the enumerable toy, where log Z and π* are exact: log Ẑ error, ESS per token and
the total variation of the weighted draws to π*, at equal LM tokens, over seeds.

    python -m benchmarks.samplers_toy --config benchmarks/configs/samplers_toy.yaml [--resume]

Writes `<output_dir>/<reward>/rows.csv` (a row per λ, sampler, seed and budget; `--resume` runs what is
missing), `summary.md` (means over seeds with bootstrap 95% intervals, each sampler paired with i.i.d. draws of
its rollout policy) and `ess_vs_tokens.png`, per toy reward ("uniform": r ~ U(0, 1); "sparse": r = 1 on ~1% of
p's mass).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.evaluation.draws import policy_draws
from benchmarks.evaluation.scoring import Reference, score
from benchmarks.evaluation.store import RowStore
from benchmarks.evaluation.summary import plot_ess, summary_table
from benchmarks.evaluation.toy import Toy, ToyTask
from benchmarks.samplers import SamplerSpec, run_sampler
from sadt.cli import CommandParser, run_command
from sadt.config import load_config
from sadt.importance import logsumexp


@dataclass(frozen=True)
class ToySamplersConfig:
    output_dir: str = "benchmarks/results/samplers/toy"
    rewards: list[str] = field(default_factory=lambda: ["uniform", "sparse"])
    length: int = 5
    lams: list[float] = field(default_factory=lambda: [5.0, 15.0, 50.0])
    budgets: list[float] = field(default_factory=lambda: [100.0, 400.0, 1600.0])  # LM tokens (a p draw: `length`)
    seeds: int = 20
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    policy_batch: int = 8
    n_resampled: int = 48
    bootstrap: int = 2000

    def __post_init__(self) -> None:
        if any(spec.head for spec in self.samplers.values()):
            raise ValueError("the toy benchmark runs samplers without a head (set head: false)")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (intervals are over seeds), got {self.seeds}")


def weighted_tv(draws, toy: Toy, target: np.ndarray) -> float:
    """Total variation between π* and the draws' self-normalised weighted measure (what resampling draws from)."""
    if not draws.log_weights.size:
        return float("nan")
    weights = np.exp(draws.log_weights - logsumexp(draws.log_weights))
    law = np.zeros(target.size)
    np.add.at(law, [toy.index(a) for a in draws.actions], weights)
    return 0.5 * float(np.abs(law - target).sum())


def run(config: ToySamplersConfig, reward: str, out: Path, resume: bool) -> RowStore:
    toy = Toy(length=config.length, reward=reward)
    task = ToyTask(toy)
    rows = RowStore(out / "rows.csv", ("window", "lam", "sampler"), resume)
    for seed in tqdm(range(config.seeds), desc=f"{reward} toy seeds", unit="seed"):
        label = f"seed{seed}"
        prior = None
        for lam in config.lams:
            target, root = toy.target(lam)
            reference = Reference(lam * root, lam * root, lam * root, float("nan"), 0)  # exact
            for name, spec in config.samplers.items():
                if rows.done(label, lam, name):
                    continue
                if prior is None:  # p's draws serve every λ of this seed
                    prior = policy_draws(toy.lm, task, 1.0, config.budgets[-1], batch_size=config.policy_batch,
                                         seed=seed)
                start = time.perf_counter()
                runs = run_sampler(spec, toy.lm, task, lam, config.budgets, seed, None, float(toy.length), prior,
                                   config.policy_batch)
                rng = np.random.default_rng(seed)
                rows.add({"window": label, "lam": lam, "sampler": name,
                          **score(draws, budget, reference, task, None, rng, config.n_resampled),
                          "tv": weighted_tv(draws.upto(budget), toy, target), "wall_s": time.perf_counter() - start}
                         for budget, draws in runs.items())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("benchmarks/configs/samplers_toy.yaml"))
    parser.add_argument("--resume", action="store_true", help="keep rows.csv and run only what it lacks")
    args = parser.parse_args(argv)
    config = load_config(args.config, ToySamplersConfig)
    baselines = {name: spec.baseline for name, spec in config.samplers.items()}
    for reward in config.rewards:
        out = Path(config.output_dir) / reward
        rows = run(config, reward, out, args.resume).rows
        header = f"# Samplers on the enumerable toy, {reward} reward ({time.strftime('%Y-%m-%d')}, " \
                 f"`{' '.join(sys.argv)}`)\n\nWindows are seeds; the reference is the exact log Z.\n"
        (out / "summary.md").write_text(header + "\n" + summary_table(rows, baselines, config.bootstrap) + "\n")
        plot_ess(rows, out / "ess_vs_tokens.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
