"""Each window's log Z reference, made by no compared sampler.

By default a long i.i.d. run of p with a seed no sampler uses (`ReferenceSpec()`). Where p's weights are too
heavy-tailed to trust (λ = 50 on the held-out windows: k̂ 1.5-4.9 at 30k and 120k tokens), K independent twisted-SMC
runs guided by a head that no compared sampler reads (`ReferenceSpec(draws="smc", head=..., runs=K, particles=P)`):

    i.i.d. p:     log Z_ref = log (1/N) Σ_i e^{λ r(x_i)},   x_i ~ p
    K SMC runs:   log Z_ref = log (1/K) Σ_k Ẑ_k             (each run's Ẑ_k is unbiased for Z, so their mean is too)

The interval is a bootstrap over the draws (over the runs for SMC); k̂ is PSIS's, of the weights e^{λ r} (of the K
Ẑ_k for SMC: NaN under 25 runs, as PSIS needs five tail draws). One run's log Ẑ is biased low (Jensen) and, at
λ = 50 on the held-out windows, spread over 4-8 units across 25 seeds with 100 particles (1.4-2.2 between two
seeds with 200): the runs' mean in Z, not in log Z, is the estimate, and its k̂ says whether the runs were large enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.evaluation.draws import smc_draws
from search.config import search_config

REFERENCE_DRAWS = ("policy", "smc")
SMC_SEED = 20_000  # run k has seed SMC_SEED + k + the config's seed: no compared sampler draws with these


@dataclass(frozen=True)
class ReferenceSpec:
    draws: str = "policy"  # "policy": i.i.d. draws of p (`reference_budget` tokens); "smc": `runs` twisted-SMC runs
    head: str | None = None  # smc: the twist, a head's path or a parameter-free value (e.g. "soft_ahead_reward")
    runs: int = 1  # smc: independent runs, each with its own seed
    particles: int = 0  # smc: particles a run

    def __post_init__(self) -> None:
        if self.draws not in REFERENCE_DRAWS:
            raise ValueError(f"reference `draws` must be one of {REFERENCE_DRAWS}, got {self.draws!r}")
        if self.draws == "policy" and (self.head is not None or self.runs != 1):
            raise ValueError("reference `draws: policy` is one run of p: it takes no `head` and `runs: 1`")
        if self.draws == "smc" and (self.head is None or self.runs < 2 or self.particles < 2):
            raise ValueError(f"reference `draws: smc` needs a `head`, `runs` >= 2 (for an interval) and `particles` "
                             f">= 2, got head={self.head!r}, runs={self.runs}, particles={self.particles}")


def smc_log_z_hats(path: Path, lm, task, lam: float, spec: ReferenceSpec, value, seed: int = 0,
                   top_k: int | None = None) -> np.ndarray:
    """The `spec.runs` twisted-SMC runs' log Ẑ (`Reference.from_log_weights` makes the reference of them), saved
    to `path` (.npy) after every run, so a stopped window resumes at its next run rather than its first."""
    done = list(np.load(path)) if path.exists() else []
    for k in tqdm(range(len(done), spec.runs), desc="reference runs", unit="run", leave=False):
        config = search_config(method="twisted_smc", lam=lam, seed=SMC_SEED + seed + k, n_samples=1, top_k=top_k,
                               progress=False)
        done.append(smc_draws(lm, task, config, spec.particles, value).log_z_hat)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, np.asarray(done))
        partial.replace(path)
    return np.asarray(done[: spec.runs])
