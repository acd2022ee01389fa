"""What a tree method's strategies read of a running search (`search.tree_search.TreeSearch` is one).

Strategies (`search.methods`) and final samplers (`search.tree_sampling`) take this view rather than the search
class, so neither imports the search that calls them; they read it and never write to it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from search.config import SearchConfig
from search.tree import Tree
from search.values import TreeValues


class SearchView(Protocol):
    tree: Tree
    config: SearchConfig
    values: TreeValues
    pending_leaves: dict[int, dict[int, int]]  # this iteration's leaves picked per node: {slot: count}
    sample_rng: np.random.Generator  # the final samplers' own random stream

    def child_log_weights(self, node: int | np.ndarray) -> np.ndarray:
        """log w(s, ·) of the soft backup and of Boltzmann selection/sampling: prior, or draw counts."""

    def rollout_log_probs(self, node: int) -> np.ndarray:
        """log q_roll(·|s): p, or P_F ∝ p exp(g Q_φ) when the rollouts are guided by a head."""

    def eligible_log_prior(self, node: int) -> np.ndarray:
        """log p(·|s), limited under `expansion: widening` to visited actions and the most likely few."""

    def widening(self, node: int) -> float:
        """C (N(s) + 1)^α, counting this iteration's virtual visits."""

    @property
    def draw_log_weights(self) -> np.ndarray:
        """log [p(x) exp(λ r(x)) / q(x)] of every draw so far (maxent_ts)."""

    @property
    def draw_terminals(self) -> np.ndarray:
        """The terminal node of every draw so far (maxent_ts)."""

    def iterate(self, batch: int) -> list[int]:
        """One more iteration of `batch` descents and rollouts (`sampling: search` draws its samples so)."""
