"""The values a tree search reads, by role: what selection, the backup and the final sampler see.

Each role has its own method, so none of them can pick up another's mixing by a flag:

- `selection(s)`: Ṽ(s·a) = (1 − α) V̂(s·a) + α Q_φ(s,a) over all actions (the hybrid, DESIGN §2);
  α = n0 / (n0 + N(s·a)) (`hybrid: visits`) or a fixed α; without a head, V̂ of visited children
  and V̂(s) for the others (`search.backup.boltzmann_logits`). N counts this iteration's earlier
  selections through s·a as visits (`Tree.pending`), so later selections of a batch lean less on
  Q_φ where the batch already goes; each selection records the law it drew from, so its importance
  weight stays exact. (Counting finished visits only measured fewer effective samples: hybrid@200
  had 1.17× MC@200's against 1.81×, lam15_2000, 5 windows; BENCHMARKS.md, 2026-12-03.)
- `backup(s)`: V̂ of the visited children, and Q_φ for the unvisited ones under `hybrid: visits`
  (the full Bellman backup with the head standing in where Monte Carlo has nothing); never mixed
  where a child was visited: mixing compounds along a fresh rollout's one-visit chain.
- `sampling(s)`: V̂ of the visited children, the values the backup normalises, so the in-tree
  sampler draws from `p exp(λ V̂)` (DTS Alg. 2) whatever the head says.

`hybrid_offset` (visits) first moves Q_φ(s, ·) by δ(s) (`head_offset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.backup import soft_backup
from search.tree import Tree


@dataclass(frozen=True)
class HeadMix:
    """How the hybrid mixes Monte Carlo with Q_φ (`search.config.MaxEntTSConfig`'s hybrid_* settings)."""

    mode: str  # "visits" (α = n0 / (n0 + N)) or "fixed" (α = alpha)
    n0: float = 1.0
    alpha: float = 0.5
    offset: bool = True  # visits: move Q_φ(s, ·) by δ(s) (`TreeValues.head_offset`)


class TreeValues:
    """Reads V̂ and Q_φ from `tree` for each role, at inverse temperature `lam`; `mix` None: Monte Carlo only."""

    def __init__(self, tree: Tree, lam: float, mix: HeadMix | None = None) -> None:
        self.tree, self.lam, self.mix = tree, lam, mix

    def _mc(self, nodes, children: np.ndarray, visited: np.ndarray) -> np.ndarray:
        """V̂(s·a) where visited, V̂(s) elsewhere."""
        return np.where(visited, self.tree.value[children], np.asarray(self.tree.value[nodes])[..., None])

    def selection(self, node: int) -> np.ndarray:
        """Ṽ(s·a) over the actions of one node, (A,)."""
        tree, mix = self.tree, self.mix
        children = tree.children[node]
        visited = children >= 0
        mc = self._mc(node, children, visited)
        if mix is None:
            return mc
        q = self._head(node, mc, visited)
        if mix.mode == "visits":
            n = np.where(visited, tree.visits[children] + tree.pending[children], 0)
            alpha = mix.n0 / (mix.n0 + n) if mix.n0 > 0 else (n == 0).astype(float)
        else:
            alpha = mix.alpha
        return (1 - alpha) * mc + alpha * q

    def backup(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Child values (n, A) and which children count in the soft backup (n, A)."""
        tree = self.tree
        children = tree.children[nodes]
        visited = children >= 0
        mc = self._mc(nodes, children, visited)
        if self.mix is None or self.mix.mode != "visits":
            return mc, visited
        q = self._head(nodes, mc, visited)
        return np.where(visited, mc, q), visited | np.isfinite(tree.log_prior[nodes])

    def sampling(self, node: int) -> np.ndarray:
        """V̂(s·a) of one node's children (meaningful where visited), (A,)."""
        return self.tree.value[self.tree.children[node]]

    def _head(self, nodes, mc: np.ndarray, visited: np.ndarray) -> np.ndarray:
        q = self.tree.q[nodes]
        if self.mix.mode == "visits" and self.mix.offset:
            q = q + self.head_offset(nodes, mc, q, visited)[..., None]
        return q

    def head_offset(self, nodes, mc: np.ndarray, q: np.ndarray, visited: np.ndarray) -> np.ndarray:
        """δ(s) = soft_p(V̂) − soft_p(Q_φ) over s's visited children; 0 where none is visited.

        soft_p(X) = (1/λ) log Σ_{visited} p(a|s) exp(λ X(s·a)) / Σ_{visited} p(a|s). Shifting every
        Q_φ(s, ·) by δ(s) makes the head a control variate: it supplies how unvisited children
        differ from the visited ones, Monte Carlo supplies the level. With one visited child,
        V̂(s) = V_φ(s) + V̂(s·a) − Q_φ(s,a), so a rollout's surprise reaches the root undiluted,
        where Q_φ alone for unvisited children would dilute it by the prior mass the rollout covers.
        A head off by a constant on an unseen prompt is thus corrected exactly (an exact head: δ = 0).
        """
        lam = self.lam
        any_visited = visited.any(axis=-1)
        rows = visited | ~np.asarray(any_visited)[..., None]  # rows with no visited child: placeholder, zeroed
        log_p = self.tree.log_prior[nodes]
        delta = soft_backup(mc, log_p, rows, lam) - soft_backup(q, log_p, rows, lam)
        return np.where(any_visited, delta, 0.0)
