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
from scipy.special import logsumexp


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
    log_z = logsumexp(log_w) - np.log(n)
    normalised = np.exp(log_w - logsumexp(log_w))  # w̃
    return {
        "value_is": float(log_z / lam),
        "target_reward": float(normalised @ r),
        "proposal_reward": float(r.mean()),
        "ess_fraction": float(1.0 / (n * np.sum(normalised**2))),
        "kl_target_proposal": float(normalised @ log_w - log_z),
        "kl_proposal_target": float(log_z - log_w.mean()),
    }
