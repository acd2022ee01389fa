"""The tree methods as strategies: what a child weighs, how a child is chosen, how values back up, and
how the final samples are drawn. `TreeSearch` reads one `Method` and never dispatches on its name.

| method      | child weights w(s·a) | select                          | backup | samples                   |
|-------------|----------------------|---------------------------------|--------|---------------------------|
| maxent_ts   | prior p(a|s)         | Boltzmann p exp(λ Ṽ)            | soft   | `config.final_sampling`   |
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

import numpy as np

from search import selection, tree_sampling
from search.search_view import SearchView


@dataclass(frozen=True)
class Pick:
    """What a selection rule decides at a node, without touching the search: a law the search draws the slot
    from (and logs for the draw's importance weight), or the slot itself (UCT, PUCT)."""

    log_probs: np.ndarray | None = None  # draw a slot ∝ exp(log_probs)
    slot: int = -1  # else this slot
    is_draw: bool = False  # a draw from the rollout policy: the search counts it in the node's draws


Selector = Callable[[SearchView, int], Pick]  # (search, node) -> what to choose
FinalSampler = Callable[[SearchView, int], list[int]]  # (search, n) -> n terminal node ids


def draw_from_policy(search: SearchView, node: int) -> Pick:
    """A draw from the rollout policy (p, or P_F ∝ p exp(g Q_φ) for method flow); counted in the node's draws."""
    return Pick(search.rollout_log_probs(node), is_draw=True)


def select_boltzmann(search: SearchView, node: int) -> Pick:
    """MaxEnt-TS: `a ∝ p(a|s) exp(λ_sel Ṽ(s·a))` over the eligible actions (λ_sel = selection_scale · λ; Ṽ
    shrunk toward V̂(s) by `selection_shrink` pseudo-visits); the search mixes in the rollout policy on a
    defensive descent (`TreeSearch.choose`)."""
    values = search.values.selection(node)
    pseudo_visits = search.config.selection_pseudo_visits
    if pseudo_visits > 0:
        tree = search.tree
        children = tree.children[node]
        visits = np.where(children >= 0, tree.visits[children] + tree.pending[children], 0)
        values = selection.shrink_to_parent(values, visits, tree.value[node], pseudo_visits)
    return Pick(selection.boltzmann_log_probs(search.eligible_log_prior(node), values, np.ones(values.shape, bool),
                                              search.tree.value[node], search.config.selection_scale
                                              * search.config.lam))


def _widen_or(rule: Selector) -> Selector:
    """DTS / DTS*: draw a new child from p while the node's draws are below C (N+1)^α, else apply `rule`."""

    def select(search: SearchView, node: int) -> Pick:
        tree = search.tree
        if tree.draws[node].sum() < search.widening(node) or not (tree.children[node] >= 0).any():
            return draw_from_policy(search, node)
        return rule(search, node)

    return select


def _boltzmann_on_draws(search: SearchView, node: int) -> Pick:
    tree = search.tree
    children = tree.children[node]
    return Pick(selection.boltzmann_log_probs(search.child_log_weights(node), tree.value[children], children >= 0,
                                              tree.value[node], search.config.lam))


def _uct(search: SearchView, node: int) -> Pick:
    tree = search.tree
    children = tree.children[node]
    visits = tree.visits[children] + tree.pending[children]
    parent_visits = tree.visits[node] + tree.pending[node]
    return Pick(slot=selection.uct(tree.value[children], visits, children >= 0, parent_visits, search.config.uct_c))


def select_puct(search: SearchView, node: int) -> Pick:
    """MCTS-UCT's PUCT; this iteration's virtual visits and leaves already picked count as visits."""
    tree = search.tree
    children = tree.children[node]
    visited = children >= 0
    visits = np.where(visited, tree.visits[children] + tree.pending[children], 0)
    for action, count in search.pending_leaves.get(node, {}).items():
        visits[action] += count
    return Pick(slot=selection.puct(tree.value[children], search.eligible_log_prior(node), visits, visited,
                                    tree.value[node], tree.visits[node] + tree.pending[node], search.config.uct_c))


@dataclass(frozen=True)
class Method:
    child_weights: str  # "prior": log p(a|s); "draws": log of the times a was drawn at s
    select: Selector
    backup: str  # "soft" (recomputed log-mean-exp) or "mean" (MCTS)
    sample: FinalSampler  # the final samples (`search.tree_sampling`), unless `sampling` names another
    records_draws: bool = False  # keeps each draw's importance weight (root_value_is, resampling, defensive):
    # the selection draws every in-tree choice from a law it can log (maxent_ts, dts)
    top_k: int | None = None  # truncates the prior to its top k whatever the config says (greedy: 1)


METHOD_STRATEGIES: dict[str, Method] = {
    "maxent_ts": Method("prior", select_boltzmann, "soft", tree_sampling.boltzmann, records_draws=True),
    "dts": Method("draws", _widen_or(_boltzmann_on_draws), "soft", tree_sampling.boltzmann, records_draws=True),
    "dts_star": Method("draws", _widen_or(_uct), "soft", tree_sampling.argmax_value_path),
    "mcts_uct": Method("prior", select_puct, "mean", tree_sampling.most_visited_path),
    "ancestral": Method("draws", draw_from_policy, "soft", tree_sampling.rollouts),
    "best_of_n": Method("draws", draw_from_policy, "soft", tree_sampling.top_rewards),
    "greedy": Method("draws", draw_from_policy, "soft", tree_sampling.rollouts, top_k=1),
    "flow": Method("draws", draw_from_policy, "soft", tree_sampling.rollouts),  # P_F: FlowConfig.guides_rollouts
}
