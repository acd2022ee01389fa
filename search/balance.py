"""Balance-heuristic (deterministic-mixture) weights for MaxEnt-TS's draws, from the laws it logged.

Iteration j draws its B_j selections from one law q_j = ε_j p + (1 − ε_j) q_tree,j (Monte-Carlo values only:
the Boltzmann law reads the tree's V̂ and structure as the iteration began, the same for the whole batch). A
draw's own weight divides by q_{j(i)}(x_i); the balance heuristic (Veach and Guibas 1995; Owen and Zhou 2000)
divides every draw by the mixture of every iteration's law,

    w_i = p(x_i) e^{λ r(x_i)} / ψ(x_i),    ψ(x) = Σ_j (B_j / N) q_j(x),

so a draw that one iteration's law found unlikely but others found likely no longer gets a huge weight. With laws
fixed in advance Σ_i w_i / N is unbiased for Z; here q_j depends on earlier draws, so it is not (as adaptive
multiple importance sampling, Cornuet et al. 2012), and over every iteration's law it is badly biased: the laws
after a good draw were shaped by it. The default mixes only the laws up to each draw's own iteration (`laws`);
`tests/test_balance_weights.py` measures both on the enumerable toy. On the 13 held-out windows the past-only
weights are level with the draws' own (1.01× their ESS per token, BENCHMARKS.md), so the search keeps its own,
exactly unbiased weights; these are for analysis (`benchmarks.samplers`' `weights: balance`).

q_j(x) is rebuilt from a `LawHistory`: nodes are numbered in order of creation, so "s existed at iteration j" is
`s < size_j`, priors never change once set, and only V̂ moves, which the search's `LawHistory`
(`search.draws`) replays backup by backup.
"""

from __future__ import annotations

import numpy as np

from sadt.importance import logsumexp
from search.backup import boltzmann_logits
from search.tree_search import TreeSearch


def check_balanceable(search: TreeSearch) -> None:
    """The balance heuristic rebuilds MaxEnt-TS's Monte-Carlo Boltzmann law only: a clear error for any other."""
    config = search.config
    if config.method != "maxent_ts":
        raise ValueError(f"balance-heuristic weights rebuild MaxEnt-TS's law; this search's method is "
                         f"{config.method!r}")
    problems = {
        "a value head (the hybrid's law reads Q_φ and this iteration's virtual visits)": search.value_head is not None,
        "expansion: widening": config.expansion != "full",
        "selection shrinkage (its law reads visit counts; set selection_shrink: 0)": config.selection_pseudo_visits > 0,
    }
    found = [name for name, bad in problems.items() if bad]
    if found:
        raise ValueError(f"balance-heuristic weights need MC-only MaxEnt-TS with full expansion; this search has "
                         f"{found}")


def draw_steps(search: TreeSearch, terminals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, slot, draw) of every step of every draw's root-to-terminal path, flat."""
    tree = search.tree
    parents, slots, owners = [], [], []
    for i, node in enumerate(terminals.tolist()):
        while node > 0:
            parents.append(int(tree.parent[node]))
            slots.append(int(tree.slot[node]))
            owners.append(i)
            node = parents[-1]
    return np.array(parents, np.int64), np.array(slots, np.int64), np.array(owners, np.int64)


def iteration_log_laws(search: TreeSearch, n_draws: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log q_j(x_i) as a (J, N) array, the draws per iteration B_j, log p(x_i) + λ r(x_i)) over the first
    `n_draws` draws (all by default), which must end on an iteration's last draw; J the iterations that made them.

    log q_tree,j(x) = Σ_t log q_j(a_t|s_t): the Boltzmann law `p(a|s) e^{λ_sel Ṽ_j(s·a)}` (Ṽ_j the V̂ of the
    children that existed, V̂_j(s) for the others) where s existed at iteration j, the rollout policy p below."""
    check_balanceable(search)
    tree, config = search.tree, search.config
    n_draws = len(search.draws) if n_draws is None else n_draws
    done = np.cumsum([law.batch for law in search.law_history.iterations])
    if n_draws not in done:
        raise ValueError(f"{n_draws} draws do not end an iteration (iterations end at draws {done.tolist()[:8]}...)")
    laws = search.law_history.iterations[: int(np.searchsorted(done, n_draws)) + 1]
    terminals = np.array([d.terminal for d in search.draws[:n_draws]], dtype=np.int64)
    parent, slot, owner = draw_steps(search, terminals)
    log_p_step = tree.log_prior[parent, slot]
    log_p = np.bincount(owner, log_p_step, minlength=n_draws)
    children, log_prior = tree.children[parent], tree.log_prior[parent]
    lam_sel = config.selection_scale * config.lam
    values = np.zeros(tree.size, np.float64)  # V̂ as iteration j began: 0 before any backup, as the tree starts
    rows = np.arange(parent.size)
    log_q = np.empty((len(laws), n_draws))
    for j, law in enumerate(laws):
        existed = (children >= 0) & (children < law.size)
        logits = boltzmann_logits(values[np.where(existed, children, 0)], log_prior, existed, values[parent], lam_sel)
        in_tree = (logits[rows, slot] - logsumexp(logits, axis=1)) if parent.size else log_p_step
        log_tree = np.bincount(owner, np.where(parent < law.size, in_tree, log_p_step), minlength=n_draws)
        log_q[j] = log_tree if law.epsilon == 0 else np.logaddexp(np.log(law.epsilon) + log_p,
                                                                   np.log1p(-law.epsilon) + log_tree)
        values[law.nodes] = law.values
    log_target = log_p + config.lam * tree.reward[terminals]
    return log_q, np.array([law.batch for law in laws]), log_target


def balance_log_weights(search: TreeSearch, n_draws: int | None = None, laws: str = "past") -> np.ndarray:
    """log w_i = log p(x_i) + λ r(x_i) − log ψ_i(x_i) of the first `n_draws` draws (all by default).

    `laws: past`: ψ_i = Σ_{j ≤ j(i)} B_j q_j / Σ_{j ≤ j(i)} B_j, the laws up to the draw's own iteration, so the
    weights of the first n draws do not change as the search goes on. `laws: all`: ψ = Σ_j (B_j / N) q_j over
    every iteration, which on a tree is biased low: the laws after a good draw were shaped by it and put more
    mass on it, so its weight shrinks (Ẑ ≈ 0.5-0.7 Z on the toy, `tests/test_balance_weights.py`)."""
    if laws not in ("past", "all"):
        raise ValueError(f"balance-heuristic `laws` must be 'past' or 'all', got {laws!r}")
    log_q, batches, log_target = iteration_log_laws(search, n_draws)
    weighted = log_q + np.log(batches)[:, None]
    if laws == "all":
        return log_target - (logsumexp(weighted, axis=0) - np.log(batches.sum()))
    own = np.repeat(np.arange(batches.size), batches)  # each draw's iteration
    up_to_own = np.logaddexp.accumulate(weighted, axis=0)[own, np.arange(own.size)]
    return log_target - (up_to_own - np.log(np.cumsum(batches)[own]))
