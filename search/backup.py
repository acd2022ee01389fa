"""Backups and Boltzmann weights, the math the tree methods share (DESIGN §2).

With deterministic token children and prior weights, the soft value of a node estimated from its
visited children C(s) is

    V̂(s) = (1/λ) log [ Σ_{c∈C(s)} p(c|s) exp(λ V̂(c)) / Σ_{c∈C(s)} p(c|s) ],

which equals the exact `V(s) = (1/λ) log Σ_a p(a|s) exp(λ V(s·a))` once every allowed child is
visited and exact (the prior renormalised over A(s) sums to one). It is recomputed from the
children on every backup: never a max, never a running average, never a sum over children
(which would grow the root by (1/λ) log k per level; DESIGN §6).

DTS (children drawn from the prior) uses the same formula with `log w = log m(s·a)`, the number
of times a was drawn at s: the equal-weight log-mean-exp over draws, duplicates counted.
"""

from __future__ import annotations

import numpy as np

from sadt.importance import logsumexp


def soft_backup(child_values: np.ndarray, child_log_prior: np.ndarray, visited: np.ndarray, lam: float) -> np.ndarray:
    """Weighted log-mean-exp over the visited children: (..., A) -> (...).

    Args:
        child_values: V̂(s·a) per action (ignored where not visited).
        child_log_prior: log weight of each child: log p(a|s) (MaxEnt-TS) or log draw count (DTS).
        visited: which children exist; each row must have at least one.
        lam: inverse temperature λ > 0.
    """
    log_w = np.where(visited, child_log_prior, -np.inf)
    scores = np.where(visited, log_w + lam * np.where(visited, child_values, 0.0), -np.inf)
    return (logsumexp(scores, axis=-1) - logsumexp(log_w, axis=-1)) / lam


def boltzmann_logits(
    child_values: np.ndarray, child_log_prior: np.ndarray, visited: np.ndarray, parent_value: np.ndarray, lam: float
) -> np.ndarray:
    """Selection logits `log p(a|s) + λ Ṽ(s·a)`: (..., A) -> (..., A).

    An unvisited child is scored with the parent's own estimate V̂(s): with no information about
    s·a, `E_p[exp(λ V(s·a))] = exp(λ V(s))`, so unvisited actions keep their prior share.
    """
    values = np.where(visited, child_values, np.asarray(parent_value)[..., None])
    return child_log_prior + lam * values


def mean_backup(child_values: np.ndarray, child_visits: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """MCTS's mean backup: the visit-weighted mean of the children, = the mean return below s: (..., A) -> (...)."""
    weights = np.where(visited, child_visits, 0).astype(np.float64)
    return (weights * np.where(visited, child_values, 0.0)).sum(axis=-1) / weights.sum(axis=-1)
