"""Every sampler as an importance sampler of π*(x) ∝ p(x|c) exp(λ r(x)), run to a budget of LM tokens.

Each runner returns a `DrawSet`: the draws in the order they were made, with log-weights
`log p(x) + λ r(x) − log q(x)` (q the law each draw came from) and the LM tokens spent when each draw
was complete, so one run to the largest budget gives every smaller budget as a prefix (`upto`).
SMC is the exception: its particles are only weighted at the end, so it runs once per budget with
as many particles as the budget buys, and keeps its own estimate of log Z (the product of its
resampling means).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sadt.importance import log_mean_exp
from sadt.lm.backend import LMBackend
from sadt.rollout import rollout
from search.balance import balance_log_weights
from search.config import SearchConfig
from search.smc import SMC
from search.task import Task
from search.tree_search import TreeSearch


@dataclass
class DrawSet:
    """A sampler's draws in order: log-weights, cumulative LM tokens after each, actions and rewards."""

    log_weights: np.ndarray  # (N,) log p(x) + λ r(x) − log q(x)
    tokens: np.ndarray  # (N,) LM token positions spent when draw i was complete (non-decreasing)
    actions: list[list[int]]
    rewards: np.ndarray  # (N,)
    log_z: float | None = None  # the sampler's own log Ẑ where it is not log mean w (SMC)

    def upto(self, budget: float) -> DrawSet:
        """The draws complete within `budget` tokens (the whole set for SMC, which has no prefixes)."""
        if self.log_z is not None:
            return self
        n = int(np.searchsorted(self.tokens, budget, side="right"))
        return DrawSet(self.log_weights[:n], self.tokens[:n], self.actions[:n], self.rewards[:n])

    @property
    def log_z_hat(self) -> float:
        """log Ẑ: log (1/N) Σ w, unbiased in Ẑ; the sampler's own where it keeps one."""
        return self.log_z if self.log_z is not None else log_mean_exp(self.log_weights)

    def save(self, path: Path) -> None:
        """To an .npz (a finished window's draws survive an interrupted run)."""
        lengths = np.array([len(a) for a in self.actions])
        actions = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.actions]) if self.actions \
            else np.zeros(0, np.int64)
        np.savez_compressed(path, log_weights=self.log_weights, tokens=self.tokens, rewards=self.rewards,
                            lengths=lengths, actions=actions, log_z=np.nan if self.log_z is None else self.log_z)

    @classmethod
    def load(cls, path: Path) -> DrawSet:
        with np.load(path) as f:
            cuts = np.cumsum(f["lengths"])[:-1]
            actions = [a.tolist() for a in np.split(f["actions"], cuts)] if f["lengths"].size else []
            log_z = float(f["log_z"])
            return cls(f["log_weights"], f["tokens"], actions, f["rewards"], None if np.isnan(log_z) else log_z)

    def at_lam(self, lam: float) -> DrawSet:
        """The same draws of p reweighted for another λ (valid only for draws of p itself: log w = λ r)."""
        return dataclasses.replace(self, log_weights=lam * self.rewards)


@torch.inference_mode()
def policy_draws(lm: LMBackend, task: Task, lam: float, budget: float, *, value_head=None,
                 batch_size: int = 64, seed: int = 0, top_k: int | None = None) -> DrawSet:
    """i.i.d. draws of p (no head) or of P_F ∝ p exp(λ Q_φ) (a head), batch after batch until `budget` tokens;
    with `top_k`, p is truncated to its top k a step (as the tree and SMC read it: the same target).

    The prompt is prefilled once and counted; each batch's tokens are shared equally by its draws."""
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    tokens0 = lm.stats.tokens
    prompt = lm.prefill(task.prompt_ids)
    value = task.value(value_head, lam)
    log_w, tokens, actions, rewards = [], [], [], []
    spent = lm.stats.tokens - tokens0
    while spent < budget:
        before = spent
        out = rollout(lm, prompt, task.action_token_ids, task.grammar, [[]] * batch_size, top_k=top_k,
                      generator=generator, value_head=value, guide_lam=lam if value is not None else 0.0)
        batch_actions = out.full_sequences([[]] * batch_size)
        r = task.reward_fn(batch_actions)
        spent = lm.stats.tokens - tokens0
        log_w.append((out.log_prior - out.log_proposal).sum(dim=1).cpu().numpy() + lam * r)
        tokens.append(before + (spent - before) * np.arange(1, batch_size + 1) / batch_size)
        actions += batch_actions
        rewards.append(r)
    return DrawSet(np.concatenate(log_w), np.concatenate(tokens), actions, np.concatenate(rewards))


STALLED_ITERATIONS = 20  # a tree whose iterations only revisit known terminals (cost 0 tokens) is complete


def tree_draws(lm: LMBackend, task: Task, config: SearchConfig, budget: float, value_head=None,
               weights: str = "own") -> DrawSet:
    """A tree's draws (MaxEnt-TS, the hybrid when `config.hybrid` is set, DTS): each rollout, weighted by the law
    it was selected and rolled out with (`weights: own`) or by the balance heuristic over the laws up to its own
    iteration (`weights: balance`, `search.balance`: a prefix keeps its weights, so `upto` stays valid), iteration
    after iteration until `budget` tokens, or until `STALLED_ITERATIONS` iterations in a row spent none (a small
    problem's tree holds every sequence)."""
    tokens0 = lm.stats.tokens
    search: TreeSearch = task.sampler(lm, dataclasses.replace(config, progress=False), value_head)
    tokens, stalled = [], 0
    while lm.stats.tokens - tokens0 < budget and stalled < STALLED_ITERATIONS:
        done, before = len(search.draws), lm.stats.tokens
        search.iterate(config.batch_size)
        tokens += [lm.stats.tokens - tokens0] * (len(search.draws) - done)
        stalled = stalled + 1 if lm.stats.tokens == before else 0
    terminals = search.draw_terminals
    tree = search.tree
    log_weights = balance_log_weights(search) if weights == "balance" else search.draw_log_weights
    return DrawSet(log_weights, np.asarray(tokens, dtype=np.float64),
                   [tree.actions_to(int(t)) for t in terminals], tree.reward[terminals].astype(np.float64))


def smc_draws(lm: LMBackend, task: Task, config: SearchConfig, particles: int, value_head=None,
              max_particles: int | None = None) -> DrawSet:
    """One SMC (or twisted SMC) run with `particles` particles: its final weighted particles and its log Ẑ. Above
    `max_particles` (KV caches that would not fit), ⌈particles / max_particles⌉ independent runs of equal size
    (seeds seed, seed + 1, ...) pooled by `pool_smc_runs`."""
    runs = 1 if max_particles is None or particles <= max_particles else -(-particles // max_particles)
    return pool_smc_runs([smc_run(lm, task, dataclasses.replace(config, seed=config.seed + k), particles // runs,
                                  value_head) for k in range(runs)], task.reward_fn)


@dataclass
class SMCRun:
    """One SMC run's final particles, their self-normalised log-weights, its log Ẑ and the LM tokens it spent."""

    particles: list[list[int]]
    log_weights: np.ndarray  # (P,) log W_i, logsumexp 0
    log_z: float
    tokens: float


def smc_run(lm: LMBackend, task: Task, config: SearchConfig, particles: int, value_head=None) -> SMCRun:
    """One run of `config`'s SMC with `particles` particles."""
    tokens0 = lm.stats.tokens
    sampler: SMC = task.sampler(lm, dataclasses.replace(config, n_rollouts=particles, progress=False), value_head)
    result = sampler.run()
    log_w = result.log_weights.astype(np.float64)
    return SMCRun([list(a) for a in result.particles], log_w - np.logaddexp.reduce(log_w), float(result.log_Z),
                  float(lm.stats.tokens - tokens0))


def pool_smc_runs(runs: list[SMCRun], reward_fn: Callable[[Sequence[Sequence[int]]], np.ndarray]) -> DrawSet:
    """Independent SMC runs as one weighted set: particle i of run k weighs Ẑ_k W_i^k, so E[Σ_i Ẑ_k W_i^k f(x_i)] =
    Z π*(f) for each run and the pool is an importance sampler of π*; log Ẑ = log (1/K) Σ_k Ẑ_k, unbiased in Ẑ.
    Resampling copies particles: copies are one draw, not several, so identical particles (within or across runs)
    are merged, their weights summed, before the ESS is counted."""
    log_z_runs = np.array([run.log_z for run in runs])
    merged: dict[tuple[int, ...], list[float]] = {}
    for run in runs:
        for actions, log_w in zip(run.particles, run.log_weights + run.log_z):
            merged.setdefault(tuple(actions), []).append(float(log_w))
    actions = [list(a) for a in merged]
    log_weights = np.array([float(np.logaddexp.reduce(w)) for w in merged.values()])
    spent = sum(run.tokens for run in runs)
    return DrawSet(log_weights, np.full(len(actions), spent), actions, reward_fn(actions),
                   log_z=float(log_mean_exp(log_z_runs)))
