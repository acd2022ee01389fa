"""The tree methods as strategies: what a child weighs, how a child is chosen, how values back up, and
how the final samples are drawn. `TreeSearch` reads one `Method` and never dispatches on its name.

| method      | child weights w(s·a) | select                          | backup | samples                   |
|-------------|----------------------|---------------------------------|--------|---------------------------|
| maxent_ts   | prior p(a|s)         | Boltzmann p exp(λ Ṽ)            | soft   | `config.sampling`         |
| dts         | draw counts m(s·a)   | draw from p under widening, else Boltzmann m exp(λ V̂) | soft | Boltzmann |
| dts_star    | draw counts          | draw from p under widening, else UCT | soft | argmax-V̂ path          |
| mcts_uct    | prior                | PUCT                            | mean   | most visited path         |
| ancestral   | draw counts          | draw from p                     | soft   | the rollouts (λ = 0)      |
| best_of_n   | draw counts          | draw from p                     | soft   | top rewards               |
| greedy      | draw counts          | draw from p truncated to top 1  | soft   | the one sequence          |
| flow        | draw counts          | draw from P_F ∝ p exp(g Q_φ)    | soft   | the rollouts (λ = 0)      |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from search import selection

if TYPE_CHECKING:
    from search.tree_search import TreeSearch

Selector = Callable[["TreeSearch", int], int]  # (search, node) -> action


def draw_from_policy(search: TreeSearch, node: int) -> int:
    """A draw from the rollout policy (p, or P_F ∝ p exp(g Q_φ) for method flow); counted in the node's draws."""
    action = selection.gumbel_max(search.rollout_log_probs(node), search.rng)
    search.count_draw(node, action)
    return action


def select_boltzmann(search: TreeSearch, node: int) -> int:
    """MaxEnt-TS: `a ∝ p(a|s) exp(λ_sel Ṽ(s·a))` over the eligible actions (λ_sel = selection_scale · λ), or
    on a defensive descent a draw from the rollout policy (`TreeSearch.choose`)."""
    tree = search.tree
    values = search.values.selection(node)
    log_tree = selection.boltzmann_log_probs(search.eligible_log_prior(node), values, np.ones(values.shape, bool),
                                             tree.value[node], search.config.selection_scale * search.config.lam)
    return search.choose(node, log_tree)


def _widen_or(rule: Selector) -> Selector:
    """DTS / DTS*: draw a new child from p while the node's draws are below C (N+1)^α, else apply `rule`."""

    def select(search: TreeSearch, node: int) -> int:
        tree = search.tree
        if tree.draws[node].sum() < search.widening(node) or not (tree.children[node] >= 0).any():
            return draw_from_policy(search, node)
        return rule(search, node)

    return select


def _boltzmann_on_draws(search: TreeSearch, node: int) -> int:
    tree = search.tree
    children = tree.children[node]
    action, _ = selection.boltzmann(search.child_log_weights(node), tree.value[children], children >= 0,
                                    tree.value[node], search.config.lam, search.rng)
    return action


def _uct(search: TreeSearch, node: int) -> int:
    tree = search.tree
    children = tree.children[node]
    visits = tree.visits[children] + tree.pending[children]
    parent_visits = tree.visits[node] + tree.pending[node]
    return selection.uct(tree.value[children], visits, children >= 0, parent_visits, search.config.uct_c)


def select_puct(search: TreeSearch, node: int) -> int:
    """MCTS-UCT's PUCT; this iteration's virtual visits and leaves already picked count as visits."""
    tree = search.tree
    children = tree.children[node]
    visited = children >= 0
    visits = np.where(visited, tree.visits[children] + tree.pending[children], 0)
    for action, count in search.pending_leaves.get(node, {}).items():
        visits[action] += count
    return selection.puct(tree.value[children], search.eligible_log_prior(node), visits, visited,
                          tree.value[node], tree.visits[node] + tree.pending[node], search.config.uct_c)


@dataclass(frozen=True)
class Method:
    child_weights: str  # "prior": log p(a|s); "draws": log of the times a was drawn at s
    select: Selector
    backup: str  # "soft" (recomputed log-mean-exp) or "mean" (MCTS)
    sampler: str  # final samples: "boltzmann", "rollouts" (λ = 0), "argmax_value", "most_visited", "top_rewards"
    records_draws: bool = False  # keeps each draw's importance weight (root_value_is, resampling)


METHOD_STRATEGIES: dict[str, Method] = {
    "maxent_ts": Method("prior", select_boltzmann, "soft", "boltzmann", records_draws=True),
    "dts": Method("draws", _widen_or(_boltzmann_on_draws), "soft", "boltzmann"),
    "dts_star": Method("draws", _widen_or(_uct), "soft", "argmax_value"),
    "mcts_uct": Method("prior", select_puct, "mean", "most_visited"),
    "ancestral": Method("draws", draw_from_policy, "soft", "rollouts"),
    "best_of_n": Method("draws", draw_from_policy, "soft", "top_rewards"),
    "greedy": Method("draws", draw_from_policy, "soft", "rollouts"),
    "flow": Method("draws", draw_from_policy, "soft", "rollouts"),
}
