"""Exact answers on the enumerable toy (`benchmarks.evaluation.toy`): π*, soft values, a head that knows them, and
the exact law of a tree's samplers, all by enumeration in float64. The tests and the toy benchmarks compare
samplers against these."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.special import logsumexp

from benchmarks.evaluation.toy import ACTION_IDS, N_ACTIONS, PROMPT
from benchmarks.evaluation.toy import Toy as EnumerableToy
from search.config import search_config
from search.tree import ROOT
from search.tree_search import TreeSearch


class Toy(EnumerableToy):
    """The enumerable toy (`benchmarks.evaluation.toy`) with the exact quantities the tests compare against."""

    def step_log_priors(self) -> np.ndarray:
        """log p(·|s_t) over the actions at every step of every sequence, (S, L, A)."""
        ids = torch.tensor([PROMPT + [ACTION_IDS[a] for a in s] for s in self.sequences])
        with torch.no_grad():
            logits = self.lm.model(ids).logits[:, len(PROMPT) - 1 : -1][..., ACTION_IDS]  # (S, L, A)
        return torch.log_softmax(logits, dim=-1).numpy()

    def truncated_step_log_priors(self, k: int) -> np.ndarray:
        """log p_k(·|s_t) of every step of every sequence: the prior cut to its k most likely actions, (S, L, A)."""
        log_p = self.step_log_priors().astype(np.float64)
        kth = np.sort(log_p, axis=-1)[..., -k][..., None]
        cut = np.where(log_p >= kth, log_p, -np.inf)
        return cut - logsumexp(cut, axis=-1, keepdims=True)

    def truncated_target(self, lam: float, k: int) -> tuple[np.ndarray, float]:
        """π*_k(x) ∝ p_k(x) exp(λ r(x)), p_k the prior truncated to its top k at every step, and (1/λ) log Z_k."""
        chosen = np.asarray(self.sequences)[..., None]
        log_pk = np.take_along_axis(self.truncated_step_log_priors(k), chosen, -1)[..., 0].sum(1)
        scores = log_pk + lam * self.table
        log_z = logsumexp(scores)
        return np.exp(scores - log_z), log_z / lam

    def exact_q(self, lam: float) -> np.ndarray:
        """Q(s_t, a) = V(s_t·a) for every step and action of every sequence, (S, L, A)."""
        cache: dict[tuple, float] = {}
        q = np.zeros((len(self.sequences), self.length, N_ACTIONS))
        for i, s in enumerate(self.sequences):
            for t in range(self.length):
                for a in range(N_ACTIONS):
                    key = tuple(s[:t]) + (a,)
                    if key not in cache:
                        cache[key] = self.exact_value(list(key), lam)
                    q[i, t, a] = cache[key]
        return q

    def exact_value(self, prefix: list[int], lam: float) -> float:
        """V(s) = (1/λ) log Σ_{x extends s} p(x|s) exp(λ r(x)), by enumeration."""
        below = [i for i, s in enumerate(self.sequences) if s[: len(prefix)] == prefix]
        prefix_log_p = logsumexp(self.log_p[below])  # p(s) = Σ_{x extends s} p(x)
        return float((logsumexp(self.log_p[below] + lam * self.table[below]) - prefix_log_p) / lam)

    def search(
        self, lam: float, n_rollouts: int, batch_size: int = 8, seed: int = 0, method: str = "maxent_ts", **kwargs
    ) -> TreeSearch:
        config = search_config(
            method=method, lam=lam, n_rollouts=n_rollouts, batch_size=batch_size, seed=seed, progress=False, **kwargs
        )
        search = TreeSearch(self.lm, self.problem, config)
        search.run()
        return search


class ExactHead:
    """Q(s, ·) = V(s·a) by enumeration, looked up by the nearest state hidden vector (float64).

    `noise` > 0 adds a fixed N(0, noise²) error per (state, action), drawn once: an inexact head
    that is still a function of the state alone.
    """

    def __init__(self, toy: Toy, lam: float, noise: float = 0.0, seed: int = 0) -> None:
        prefixes = [list(p) for t in range(toy.length) for p in itertools.product(range(3), repeat=t)]
        prompt = toy.lm.prefill(PROMPT)
        hidden, _ = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in p] for p in prefixes], ACTION_IDS)
        lengths = torch.tensor([len(p) for p in prefixes])
        self.keys = hidden[torch.arange(len(prefixes)), lengths]  # (P, H) hidden of each prefix state
        self.q = torch.tensor([[toy.exact_value(p + [a], lam) for a in range(3)] for p in prefixes])
        if noise > 0:
            generator = torch.Generator().manual_seed(seed)
            self.q += noise * torch.randn(self.q.shape, generator=generator, dtype=self.q.dtype)
        self.calls = 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        nearest = torch.cdist(hidden.double(), self.keys.double()).argmin(dim=1)
        return self.q[nearest]


def tree_distribution(search: TreeSearch) -> np.ndarray:
    """The exact distribution of the tree's Boltzmann sampler (DTS Alg. 2) over all sequences."""
    tree = search.tree
    lam = 0.0 if search.config.method in ("ancestral", "greedy", "flow") else search.config.lam
    q = np.zeros(search.tree.n_actions ** search.grammar.length)
    stack = [(ROOT, 0.0)]
    while stack:
        node, log_q = stack.pop()
        if tree.terminal[node]:
            q[int("".join(map(str, tree.actions_to(node))), N_ACTIONS)] += np.exp(log_q)
            continue
        children = tree.children[node]
        visited = children >= 0
        logits = np.where(visited, search.child_log_weights(node) + lam * tree.value[children], -np.inf)
        logits -= logsumexp(logits)
        stack += [(int(children[a]), log_q + logits[a]) for a in np.flatnonzero(visited)]
    return q


def resample_distribution(search: TreeSearch, toy: Toy) -> np.ndarray:
    """The exact distribution of `TreeSearch.resample_draws` over all sequences: each draw's normalised
    importance weight p e^{λr} / q, summed per terminal."""
    log_w = np.asarray(search.draw_log_weights)
    weights = np.exp(log_w - logsumexp(log_w))
    q = np.zeros(len(toy.sequences))
    np.add.at(q, [toy.index(search.tree.actions_to(t)) for t in search.draw_terminals], weights)
    return q


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def policy_step_log_probs(toy: Toy, lam: float, q: np.ndarray | None = None) -> np.ndarray:
    """log P(a_t | s_t) of each sequence's own actions, (S, L): the prior, or P_F ∝ p exp(λ Q) given Q (S, L, A)."""
    log_prior = toy.step_log_priors().astype(np.float64)  # (S, L, A)
    if q is not None:
        log_prior = log_prior + lam * q
        log_prior = log_prior - logsumexp(log_prior, axis=-1, keepdims=True)
    actions = np.asarray(toy.sequences)[..., None]
    return np.take_along_axis(log_prior, actions, axis=-1)[..., 0]


def search_sampler_distribution(search: TreeSearch, toy: Toy, completion: np.ndarray) -> np.ndarray:
    """The exact distribution of one `sampling: search` draw from the tree as it stands, on a descent that is
    not defensive (`mixture_distribution` adds those).

    Descend with the method's own selection law at every node (MaxEnt-TS: `p exp(λ_sel Ṽ)` over every allowed
    action; DTS: p while widening, else Boltzmann on the draws); an unvisited child is completed by the rollout
    policy, whose per-step log-probs of each sequence's actions are `completion` (S, L).
    """
    tree = search.tree
    sequences = np.asarray(toy.sequences)
    q = np.zeros(len(sequences))
    stack = [(ROOT, 0.0)]
    while stack:
        node, log_q = stack.pop()
        if tree.terminal[node]:
            q[toy.index(tree.actions_to(node))] += np.exp(log_q)
            continue
        pick = search.method.select(search, node)
        if pick.log_probs is None:
            raise ValueError(f"method {search.config.method!r} picks a child by argmax: its draws have no law")
        logits = pick.log_probs - logsumexp(pick.log_probs)
        prefix = tree.actions_to(node)
        for a in np.flatnonzero(np.isfinite(logits)):
            child = int(tree.children[node, a])
            if child >= 0:
                stack.append((child, log_q + logits[a]))
                continue
            depth = len(prefix) + 1
            below = np.all(sequences[:, :depth] == prefix + [a], axis=1)
            q[below] += np.exp(log_q + logits[a] + completion[below, depth:].sum(axis=1))
    return q


def mixture_distribution(search: TreeSearch, toy: Toy, completion: np.ndarray) -> np.ndarray:
    """The exact law of the search's next draw: ε q_roll + (1 − ε) q_tree, q_roll the rollout policy's
    whole-path law (per-step log-probs `completion`, (S, L)) and q_tree `search_sampler_distribution`; ε the
    search's share as it stands (it moves between iterations under `defensive_adapt`)."""
    epsilon = search.epsilon
    tree_law = search_sampler_distribution(search, toy, completion)
    return epsilon * np.exp(completion.sum(axis=1)) + (1 - epsilon) * tree_law
