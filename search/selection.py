"""Child selection rules, one node at a time: Boltzmann (MaxEnt-TS, DTS), UCT (DTS*), PUCT (MCTS).

Each takes the node's per-action arrays (A,) and returns an action index.
"""

from __future__ import annotations

import numpy as np

from sadt.importance import logsumexp
from search.backup import boltzmann_logits


def boltzmann(
    log_w: np.ndarray, values: np.ndarray, visited: np.ndarray, parent_value: float, lam: float,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """Sample `a ∝ w_a exp(λ Ṽ(s·a))` by Gumbel-max (unvisited children valued at V̂(s)); returns the
    action and its log-probability under that softmax (the proposal's share of an importance weight)."""
    log_probs = boltzmann_log_probs(log_w, values, visited, parent_value, lam)
    action = gumbel_max(log_probs, rng)
    return action, float(log_probs[action])


def boltzmann_log_probs(
    log_w: np.ndarray, values: np.ndarray, visited: np.ndarray, parent_value: float, lam: float
) -> np.ndarray:
    """log of the Boltzmann law `w_a exp(λ Ṽ(s·a)) / Σ_b w_b exp(λ Ṽ(s·b))` over the actions, (A,)."""
    logits = boltzmann_logits(values, log_w, visited, parent_value, lam)
    return logits - logsumexp(logits)


def shrink_to_parent(values: np.ndarray, visits: np.ndarray, parent_value: float, n0: float) -> np.ndarray:
    """`Ṽ(s·a) = (N(s·a) V̂(s·a) + n0 V̂(s)) / (N(s·a) + n0)`, (A,): a child seen N times weighs its own Monte-Carlo
    estimate N : n0 against its parent's, which pools every rollout below s. At λ = 15 a child's one lucky
    rollout otherwise takes e^{λ ΔV} of the selection; this tempers it by N / (N + n0), less as visits grow."""
    return (visits * values + n0 * parent_value) / (visits + n0)


def gumbel_max(log_probs: np.ndarray, rng: np.random.Generator) -> int:
    """One action drawn from `exp(log_probs)` (unnormalised is fine) by the Gumbel-max trick."""
    return int(np.argmax(log_probs + rng.gumbel(size=log_probs.shape)))


def uct(values: np.ndarray, visits: np.ndarray, visited: np.ndarray, parent_visits: float, c: float) -> int:
    """`argmax V̂(s·a) + c sqrt(log N(s) / N(s·a))` over visited children (DTS*)."""
    bonus = c * np.sqrt(np.log(max(parent_visits, 1.0)) / np.maximum(visits, 1))
    return int(np.argmax(np.where(visited, values + bonus, -np.inf)))


def puct(
    values: np.ndarray, log_prior: np.ndarray, visits: np.ndarray, visited: np.ndarray,
    parent_value: float, parent_visits: float, c: float,
) -> int:
    """`argmax Q(s,a) + c p(a|s) sqrt(N(s)) / (1 + N(s·a))` over allowed actions (AlphaZero's PUCT).

    An unvisited action's Q is the parent's mean value; `visits` may include virtual visits.
    """
    q = np.where(visited, values, parent_value)
    score = q + c * np.exp(log_prior) * np.sqrt(parent_visits) / (1.0 + visits)
    return int(np.argmax(np.where(np.isfinite(log_prior), score, -np.inf)))
