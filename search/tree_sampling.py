"""Samples from a finished tree (DTS Alg. 2 and the baselines' rules), without model calls.

- Boltzmann descent: from the root, pick a visited child with weight `w(s·a) exp(λ V̂(s·a))` (the
  weights the soft backup normalises, `TreeValues.sampling`); λ = 0 gives the empirical law of the
  rollouts (ancestral, greedy, flow).
- Importance resampling (maxent_ts, `sampling: resample`): draws taken with replacement from the
  search's own draws with weight p(x) exp(λ r(x)) / q(x); consistent for π* as the draws grow.
- argmax-V̂ path (dts_star), most visited path (mcts_uct), the n best rewards (best_of_n).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sadt.importance import logsumexp
from search.search_view import SearchView
from search.tree import ROOT


def boltzmann_descent(search: SearchView, lam: float, rng: np.random.Generator) -> int:
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


def greedy_path(search: SearchView, key: np.ndarray) -> int:
    """Follow the child with the largest `key` (V̂ or visits) down to a terminal."""
    tree, node = search.tree, ROOT
    while not tree.terminal[node]:
        children = tree.children[node]
        node = int(children[np.argmax(np.where(children >= 0, key[children], -np.inf))])
    return node


# -- the final samplers: (search, n) -> n terminal node ids ------------------------------------------


def boltzmann(search: SearchView, n: int) -> list[int]:
    """n Boltzmann descents at the search's λ (DTS Alg. 2)."""
    return [boltzmann_descent(search, search.config.lam, search.sample_rng) for _ in range(n)]


def rollouts(search: SearchView, n: int) -> list[int]:
    """n descents at λ = 0: the empirical law of the rollouts."""
    return [boltzmann_descent(search, 0.0, search.sample_rng) for _ in range(n)]


def argmax_value_path(search: SearchView, n: int) -> list[int]:
    return [greedy_path(search, search.tree.value)] * n


def most_visited_path(search: SearchView, n: int) -> list[int]:
    return [greedy_path(search, search.tree.visits)] * n


def top_rewards(search: SearchView, n: int) -> list[int]:
    """The n highest-reward terminals (cycling if the tree holds fewer)."""
    tree = search.tree
    terminals = np.flatnonzero(tree.terminal[: tree.size])
    ranked = terminals[np.argsort(-tree.reward[terminals], kind="stable")]
    return [int(ranked[i % ranked.size]) for i in range(n)]


def resampled_draws(search: SearchView, n: int) -> list[int]:
    """n of the search's draws resampled by their importance weights (maxent_ts, `sampling: resample`)."""
    return resample(search.draw_log_weights, search.draw_terminals, n, search.sample_rng)


def more_descents(search: SearchView, n: int) -> list[int]:
    """Each sample one more selection + rollout, backed up (maxent_ts, `sampling: search`)."""
    terminals: list[int] = []
    while len(terminals) < n:
        terminals += search.iterate(min(search.config.batch_size, n - len(terminals)))
    return terminals


def final_samples(search: SearchView, own: Callable[[SearchView, int], list[int]], n: int) -> list[int]:
    """n terminal node ids: by `config.sampling` where it names a sampler ("resample", "search"), else by the
    method's own sampler `own` ("tree")."""
    chosen = {"resample": resampled_draws, "search": more_descents}.get(search.config.final_sampling, own)
    return chosen(search, n)
