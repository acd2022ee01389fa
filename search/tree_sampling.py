"""Samples from a finished tree (DTS Alg. 2 and the baselines' rules), without model calls.

- Boltzmann descent: from the root, pick a visited child with weight `w(s·a) exp(λ V̂(s·a))` (the
  weights the soft backup normalises, `TreeValues.sampling`); λ = 0 gives the empirical law of the
  rollouts (ancestral, greedy, flow).
- Importance resampling (maxent_ts, `sampling: resample`): draws taken with replacement from the
  search's own draws with weight p(x) exp(λ r(x)) / q(x); consistent for π* as the draws grow.
- argmax-V̂ path (dts_star), most visited path (mcts_uct), the n best rewards (best_of_n).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sadt.importance import logsumexp
from search.tree import ROOT

if TYPE_CHECKING:
    from search.tree_search import TreeSearch


def boltzmann_descent(search: TreeSearch, lam: float, rng: np.random.Generator) -> int:
    """One terminal node id drawn from `Π_t w(s_t·a_t) exp(λ V̂(s_t·a_t)) / Σ_b (same)` over visited children."""
    tree, node = search.tree, ROOT
    while not tree.terminal[node]:
        children = tree.children[node]
        logits = np.where(children >= 0, search.child_log_weights(node) + lam * search.values.sampling(node), -np.inf)
        node = int(children[np.argmax(logits + rng.gumbel(size=logits.shape))])
    return node


def resample(log_weights: np.ndarray, terminals: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """n of `terminals` drawn with replacement ∝ exp(log_weights) (sampling importance resampling)."""
    if log_weights.size == 0:
        raise RuntimeError("resampling needs method maxent_ts and at least one finished rollout")
    probs = np.exp(log_weights - logsumexp(log_weights))
    return rng.choice(terminals, size=n, p=probs / probs.sum()).tolist()


def greedy_path(search: TreeSearch, key: np.ndarray) -> int:
    """Follow the child with the largest `key` (V̂ or visits) down to a terminal."""
    tree, node = search.tree, ROOT
    while not tree.terminal[node]:
        children = tree.children[node]
        node = int(children[np.argmax(np.where(children >= 0, key[children], -np.inf))])
    return node


def top_rewards(search: TreeSearch, n: int) -> list[int]:
    """The n highest-reward terminals (cycling if the tree holds fewer)."""
    tree = search.tree
    terminals = np.flatnonzero(tree.terminal[: tree.size])
    ranked = terminals[np.argsort(-tree.reward[terminals], kind="stable")]
    return [int(ranked[i % ranked.size]) for i in range(n)]


def final_samples(search: TreeSearch, n: int) -> list[int]:
    """n terminal node ids by the method's final sampler (and `config.sampling` for maxent_ts)."""
    config, sampler, rng = search.config, search.method.sampler, search.sample_rng
    if config.final_sampling == "resample":
        return resample(search.draw_log_weights, search.draw_terminals, n, rng)
    if config.final_sampling == "search":  # each sample is one more selection + rollout, backed up
        terminals: list[int] = []
        while len(terminals) < n:
            terminals += search.iterate(min(config.batch_size, n - len(terminals)))
        return terminals
    if sampler == "top_rewards":
        return top_rewards(search, n)
    if sampler in ("argmax_value", "most_visited"):
        key = search.tree.value if sampler == "argmax_value" else search.tree.visits
        return [greedy_path(search, key)] * n
    lam = 0.0 if sampler == "rollouts" else config.lam
    return [boltzmann_descent(search, lam, rng) for _ in range(n)]
