"""How well a proposal q covers the target π*(x) ∝ p(x) exp(λ r(x)), from N draws x_i ~ q (float64).

With log-weights log w_i = log p(x_i) + λ r(x_i) − log q(x_i), Ẑ = (1/N) Σ w_i (unbiased for Z) and
self-normalised weights w̃_i = w_i / Σ_j w_j:

    V_IS       = (1/λ) log Ẑ                       the root's soft value, log Z / λ
    E_π*[r]    ≈ Σ w̃_i r_i                          self-normalised
    ESS / N    = 1 / (N Σ w̃_i²)                     1 when q = π*, → 1/N as q misses π*
    KL(π*‖q)   ≈ Σ w̃_i log w_i − log Ẑ             the mass-covering direction: q's misses cost most
    KL(q‖π*)   ≈ log Ẑ − (1/N) Σ log w_i           the TB / reverse direction: q's excess costs most

Both KL estimates are exactly 0 when every weight is equal (q = π*), are consistent as N grows, and
are biased at small N (KL(π*‖q) can never exceed log N), so compare proposals at equal N.
"""

from __future__ import annotations

import numpy as np


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(x) along `axis` with the max shifted out; rows of all -inf give -inf.

    scipy's version spends ~80 µs per call on array-API dispatch, which dominated the tree's
    backups on 12-element rows.
    """
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - peak), axis=axis)) + np.squeeze(peak, axis=axis)


def log_mean_exp(log_w: np.ndarray) -> float:
    """log (1/N) Σ exp(log_w): the log of an importance-sampling estimate of Z."""
    log_w = np.asarray(log_w, dtype=np.float64)
    return float(logsumexp(log_w) - np.log(log_w.size))


def effective_sample_size(log_w: np.ndarray) -> float:
    """(Σw)² / Σw² in log space: N for equal weights, 1 when one weight dominates; NaN for no weights."""
    log_w = np.asarray(log_w, dtype=np.float64)
    return float(np.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w))) if log_w.size else float("nan")


def importance_summary(log_weights: np.ndarray, rewards: np.ndarray, lam: float) -> dict[str, float]:
    """V_IS, E_π*[r], ESS / N and both KL estimates (module docstring) from N draws' log-weights and rewards."""
    log_w = np.asarray(log_weights, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if log_w.ndim != 1 or log_w.size < 2 or r.shape != log_w.shape:
        raise ValueError(f"need two 1-D arrays of the same length >= 2, got shapes {log_w.shape} and {r.shape}")
    if not (np.isfinite(log_w).all() and np.isfinite(r).all()):
        raise ValueError("log-weights and rewards must be finite (a draw q gave zero probability?)")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    n = log_w.size
    log_z = log_mean_exp(log_w)
    normalised = np.exp(log_w - logsumexp(log_w))  # w̃
    return {
        "value_is": float(log_z / lam),
        "target_reward": float(normalised @ r),
        "proposal_reward": float(r.mean()),
        "ess_fraction": effective_sample_size(log_w) / n,
        "kl_target_proposal": float(normalised @ log_w - log_z),
        "kl_proposal_target": float(log_z - log_w.mean()),
    }


def psis_khat(log_w: np.ndarray) -> float:
    """Pareto k̂ of the importance weights' upper tail (PSIS, Vehtari et al. 2024): NaN under 5 tail draws.

    The largest M = ⌈min(0.2 N, 3√N)⌉ weights, less the next one, are fitted by a generalised Pareto
    distribution (Zhang & Stephens 2009, with PSIS's weak prior towards k = 0.5). k̂ < 0.5: the weights have
    a finite variance and Ẑ converges at its usual rate; 0.5-0.7: slowly; > 0.7: Ẑ is unreliable however
    healthy the ESS looks (a missed mode, or a few weights that dominate).
    """
    log_w = np.sort(np.asarray(log_w, dtype=np.float64))
    log_w = log_w - log_w[-1]
    n = log_w.size
    tail_length = int(np.ceil(min(0.2 * n, 3 * np.sqrt(n))))
    if n < 2 or tail_length < 5:
        return float("nan")
    cutoff = max(log_w[-tail_length - 1], np.log(np.finfo(float).tiny))
    tail = log_w[log_w > cutoff]
    if tail.size < 5:
        return float("nan")
    return generalised_pareto_shape(np.exp(tail) - np.exp(cutoff))


def generalised_pareto_shape(exceedances: np.ndarray, prior_strength: float = 10.0) -> float:
    """Shape k of a generalised Pareto fitted to positive exceedances (ascending) by Zhang & Stephens' (2009)
    profile posterior mean, shrunk towards 0.5 by `prior_strength` pseudo-draws (PSIS's choice)."""
    x = np.asarray(exceedances, dtype=np.float64)
    n = x.size
    m = 30 + int(np.sqrt(n))
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    profile = n * (np.log(-b / k) - k - 1)  # log-likelihood of each candidate b at its own k
    weights = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    b_mean = float(np.sum(b * weights) / weights.sum())
    shape = float(np.log1p(-b_mean * x).mean())
    return (n * shape + prior_strength * 0.5) / (n + prior_strength)
