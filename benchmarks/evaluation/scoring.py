"""Scores of a sampler's draws at a budget, against a reference log Z that none of the compared samplers made.

For N draws with log-weights log w_i (`draws.DrawSet`):

    log Ẑ          = log (1/N) Σ w_i (SMC: its own product of resampling means)
    log Z error    = log Ẑ − log Z_ref                 (in log units, i.e. λ·V)
    ESS            = (Σ w)² / Σ w²                      (Kish), and per 1000 LM tokens
    k̂              = PSIS's Pareto tail shape of the weights (> 0.7: Ẑ unreliable whatever the ESS says)
    CRPS           of forecasts resampled ∝ w (LLMTime's quantile CRPS against the window's truth)
    distinct       sequences among the draws (estimates from distinct leaves with exact densities, TreeSample's,
                   pool only what is drawn twice)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.evaluation.draws import DrawSet
from sadt.importance import effective_sample_size, log_mean_exp, logsumexp, psis_khat
from sadt.metrics import crps


@dataclass(frozen=True)
class Reference:
    """log Z of one window at one λ from a run that no compared sampler shares (`references.ReferenceSpec`)."""

    log_z: float
    low: float  # bootstrap 95% interval of log Ẑ_ref over its draws (over its runs for SMC)
    high: float
    khat: float
    n_draws: int  # draws of p, or SMC runs

    @classmethod
    def from_prior_rewards(cls, rewards: np.ndarray, lam: float, rng: np.random.Generator,
                           n_boot: int = 1000) -> Reference:
        """From i.i.d. draws of p: log w = λ r."""
        return cls.from_log_weights(lam * np.asarray(rewards, dtype=np.float64), rng, n_boot)

    @classmethod
    def from_log_weights(cls, log_w: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> Reference:
        """log Z_ref = log mean w of independent unbiased estimates w_i of Z, with a bootstrap interval over them."""
        boot = rng.integers(0, log_w.size, (n_boot, log_w.size))
        resampled = logsumexp(log_w[boot], axis=1) - np.log(log_w.size)
        return cls(log_mean_exp(log_w), float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5)),
                   psis_khat(log_w), int(log_w.size))

    @classmethod
    def from_row(cls, row: dict) -> Reference:
        """A reference read back from references.csv."""
        return cls(float(row["log_z"]), float(row["low"]), float(row["high"]), float(row["khat"]), int(row["n_draws"]))


def resampled_indices(log_weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws' indices taken with replacement ∝ w (sampling importance resampling)."""
    probs = np.exp(log_weights - logsumexp(log_weights))
    return rng.choice(log_weights.size, size=n, p=probs / probs.sum())


def score(draws: DrawSet, budget: float, reference: Reference, task, truth: np.ndarray | None,
          rng: np.random.Generator, n_resampled: int = 48) -> dict:
    """The scores of `draws` within `budget` tokens (module docstring); NaN where nothing was drawn."""
    within = draws.upto(budget)
    n = within.log_weights.size
    row = {"budget": budget, "n_draws": n, "tokens": float(within.tokens[-1]) if n else 0.0,
           "distinct": len({tuple(a) for a in within.actions})}
    if n == 0:
        return {**row, **dict.fromkeys(("log_z", "log_z_error", "ess", "ess_per_ktoken", "khat", "crps",
                                        "resampled_reward"), float("nan"))}
    ess = effective_sample_size(within.log_weights)
    picked = resampled_indices(within.log_weights, n_resampled, rng)
    values = task.values([within.actions[i] for i in picked]) if truth is not None else None
    return {
        **row,
        "log_z": within.log_z_hat,
        "log_z_error": within.log_z_hat - reference.log_z,
        "ess": ess,
        "ess_per_ktoken": 1000 * ess / row["tokens"],
        "khat": psis_khat(within.log_weights),
        "crps": crps(truth, values) if values is not None and len(values) else float("nan"),
        "resampled_reward": float(within.rewards[picked].mean()),
    }
