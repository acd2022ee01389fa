"""MaxEnt-TS: maximum-entropy tree search sampling π*(x) ∝ p(x|c) exp(λ r(x)).

The token-level form of Diffusion Tree Sampling (Jain et al., NeurIPS 2025, Algorithms 1-2).
One iteration, for a batch of B leaves at once:

1. Select: descend from the root sampling `a ∝ p(a|s) exp(λ Ṽ(s·a))` (Gumbel-max), where Ṽ is
   the child's soft value or, for an unvisited child, the parent's own V̂(s); stop at the first
   unvisited child (a new leaf) or at a known terminal.
2. Expand + roll out: one batched LM pass extends all new leaves and samples p to a terminal;
   every state of the rollout joins the tree with its full prior vector (full expansion costs
   nothing extra: the rollout's forward already computed it).
3. Score the terminals with the reward (one vectorised call).
4. Back up along each path, recomputing `V̂(s)` from the children (`search.backup.soft_backup`).

All B selections of an iteration see the tree as it was before the iteration. Boltzmann selection
is a sampler, so two selections landing on the same leaf are two independent rollouts below it,
not wasted work: no virtual loss is needed, and results do not depend on B beyond sampling noise
(tested). Samples come from the finished tree without model calls (DTS Alg. 2): descend among
visited children with weights `p(c|s) exp(λ V̂(c))`, the same weights the backup normalises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.lm.backend import TorchLM
from sadt.rewards import RewardError
from sadt.rollout import masked_log_softmax, rollout
from search.backup import boltzmann_logits, soft_backup
from search.tree import ROOT, Tree

METHODS = ("maxent_ts",)

RewardFn = Callable[[list[list[int]]], np.ndarray]  # B action sequences -> (B,) rewards


@dataclass(frozen=True)
class SearchConfig:
    method: str = "maxent_ts"  # one of METHODS
    lam: float = 1.0  # inverse temperature λ > 0 of the target p(x) exp(λ r(x))
    n_rollouts: int = 64  # rollout budget (iterations x batch)
    batch_size: int = 16  # leaves selected, expanded and rolled out per iteration
    n_samples: int = 32  # samples drawn from the finished tree
    top_k: int | None = None  # truncate the prior to its k most likely allowed actions (target changes too)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"search `method` must be one of {METHODS}, got {self.method!r}")
        if not self.lam > 0:
            raise ValueError(f"search `lam` must be > 0 (inverse temperature), got {self.lam}")
        for name in ("n_rollouts", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"search `{name}` must be >= 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"search `top_k` must be >= 1 or null, got {self.top_k}")


@dataclass
class SearchResult:
    samples: list[list[int]]  # action sequences drawn from the finished tree
    sample_rewards: np.ndarray  # (n_samples,) their actual rewards
    best: list[int]  # the highest-reward terminal the search saw
    best_reward: float  # its actual reward (not a value estimate)
    root_value: float  # V̂(root), the estimate of (1/λ) log Z
    lam: float
    tree: Tree
    n_rollouts: int  # rollouts completed (fewer than asked if interrupted)
    nfe_tokens: int  # LM token positions processed, prompt included
    forward_calls: int
    wall_s: float
    interrupted: bool = False
    tree_stats: dict = field(default_factory=dict)

    @property
    def log_Z(self) -> float:
        return self.lam * self.root_value


class MaxEntTS:
    """MaxEnt-TS over an LM prior restricted by a grammar.

    Args:
        lm: the torch backend.
        prompt_ids: the context's token ids.
        action_token_ids: (A,) vocabulary id of each action index.
        grammar: allowed actions per state (`initial`, `mask`, `advance`, `replay`).
        reward_fn: terminal action sequences -> rewards (B,).
        config: λ, budget, batch size, seed.
    """

    def __init__(
        self,
        lm: TorchLM,
        prompt_ids: Sequence[int],
        action_token_ids: Sequence[int],
        grammar,
        reward_fn: RewardFn,
        config: SearchConfig,
    ) -> None:
        self.lm, self.grammar, self.reward_fn, self.config = lm, grammar, reward_fn, config
        self.action_token_ids = list(action_token_ids)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=lm.device).manual_seed(config.seed)
        self.tree = Tree(len(self.action_token_ids))
        self._start = time.perf_counter()
        self._calls0, self._tokens0 = lm.stats.forward_calls, lm.stats.tokens  # the prompt's prefill counts too
        self.prompt = lm.prefill(prompt_ids)
        root = lm.extend(self.prompt, [[]], self.action_token_ids)
        mask = grammar.mask(grammar.initial(1, lm.device))
        self.tree.log_prior[ROOT] = masked_log_softmax(root.logits.double(), mask, config.top_k)[0].cpu().numpy()
        self.rollouts_done = 0

    def select(self) -> tuple[int, int]:
        """One Boltzmann descent: (parent, action) of a new leaf, or (terminal node, -1)."""
        tree, lam, node = self.tree, self.config.lam, ROOT
        while True:
            children = tree.children[node]
            visited = children >= 0
            logits = boltzmann_logits(tree.value[children], tree.log_prior[node], visited, tree.value[node], lam)
            action = int(np.argmax(logits + self.rng.gumbel(size=logits.shape)))
            child = int(children[action])
            if child < 0:
                return node, action
            if tree.terminal[child]:
                return child, -1
            node = child

    def backup(self, node: int) -> None:
        """Set a terminal's value to its reward and recompute every ancestor's V̂ from its children."""
        tree, lam = self.tree, self.config.lam
        tree.value[node] = tree.reward[node]
        tree.visits[node] += 1
        node = int(tree.parent[node])
        while node >= 0:
            children = tree.children[node]
            tree.value[node] = soft_backup(tree.value[children], tree.log_prior[node], children >= 0, lam)
            tree.visits[node] += 1
            node = int(tree.parent[node])

    def iterate(self, batch: int) -> None:
        """Select `batch` leaves, roll the new ones out in one batched pass, score, insert, back up.

        The tree is only changed after the rollouts and rewards succeed, so a Ctrl-C or a failing
        reward mid-iteration leaves the tree as it was before the iteration.
        """
        picks = [self.select() for _ in range(batch)]
        revisits = [node for node, action in picks if action < 0]  # known terminals: no LM call
        new = [(parent, action) for parent, action in picks if action >= 0]
        suffixes = [[action] for _, action in new]  # actions below each parent: the new one, then the rollout's
        paths = [self.tree.actions_to(parent) + [action] for parent, action in new]
        step_log_probs: list[np.ndarray | None] = [None] * len(paths)  # (T, A) prior vectors along each rollout
        ended = self.grammar.replay(paths).done.tolist() if paths else []
        to_roll = [i for i, end in enumerate(ended) if not end]
        if to_roll:
            out = rollout(
                self.lm, self.prompt, self.action_token_ids, self.grammar, [paths[i] for i in to_roll],
                top_k=self.config.top_k, generator=self.generator, return_step_log_probs=True,
            )
            for row, i in enumerate(to_roll):
                length = int(out.lengths[row])
                suffixes[i] += out.actions[row, :length].tolist()
                paths[i] = paths[i] + suffixes[i][1:]
                step_log_probs[i] = out.step_log_probs[row, :length].cpu().numpy()
        rewards = self._rewards(paths) if paths else np.zeros(0)
        terminals = revisits + [
            self._insert(parent, suffix, log_probs, reward)
            for (parent, _), suffix, log_probs, reward in zip(new, suffixes, step_log_probs, rewards)
        ]
        for node in terminals:
            self.backup(node)
        self.rollouts_done += batch

    def _insert(self, parent: int, actions: list[int], step_log_probs: np.ndarray | None, reward: float) -> int:
        """Add the path `actions` below `parent` (the rollout's states join the tree); returns its terminal.

        `step_log_probs[t]` is the prior over actions at the state after `actions[: t + 1]`.
        """
        node = self.tree.add(parent, actions[0])
        for t, action in enumerate(actions[1:]):
            self.tree.log_prior[node] = step_log_probs[t]
            node = self.tree.add(node, action)
        self.tree.terminal[node] = True
        self.tree.reward[node] = reward
        return node

    def _rewards(self, sequences: list[list[int]]) -> np.ndarray:
        """One vectorised reward call; a wrong shape or a non-finite reward names the sample."""
        rewards = np.asarray(self.reward_fn(sequences), dtype=np.float64)
        if rewards.shape != (len(sequences),):
            raise RewardError(f"reward_fn returned shape {rewards.shape} for {len(sequences)} sequences")
        bad = ~np.isfinite(rewards)
        if bad.any():
            i = int(np.argmax(bad))
            raise RewardError(f"reward of sample {i} (actions {sequences[i]}) is {rewards[i]}; rewards must be finite")
        return rewards

    def sample(self, n: int) -> list[int]:
        """Terminal node ids drawn from the finished tree without model calls (DTS Alg. 2)."""
        tree, lam, out = self.tree, self.config.lam, []
        for _ in range(n):
            node = ROOT
            while not tree.terminal[node]:
                children = tree.children[node]
                visited = children >= 0
                logits = np.where(visited, tree.log_prior[node] + lam * tree.value[children], -np.inf)
                node = int(children[np.argmax(logits + self.rng.gumbel(size=logits.shape))])
            out.append(node)
        return out

    def run(self) -> SearchResult:
        """Spend the rollout budget (Ctrl-C stops early and still returns the result so far)."""
        config, interrupted = self.config, False
        with tqdm(total=config.n_rollouts, desc="MaxEnt-TS", unit="rollout", disable=not config.progress) as bar:
            try:
                while self.rollouts_done < config.n_rollouts:
                    batch = min(config.batch_size, config.n_rollouts - self.rollouts_done)
                    self.iterate(batch)
                    bar.update(batch)
                    bar.set_postfix(root_value=f"{self.tree.value[ROOT]:.4f}", nodes=self.tree.size)
            except KeyboardInterrupt:
                interrupted = True
        return self.result(interrupted)

    def result(self, interrupted: bool = False) -> SearchResult:
        tree = self.tree
        if self.rollouts_done == 0:
            raise RuntimeError("the search was stopped before its first rollout finished")
        samples = self.sample(self.config.n_samples)
        terminals = np.flatnonzero(tree.terminal[: tree.size])
        best = int(terminals[np.argmax(tree.reward[terminals])])
        return SearchResult(
            samples=[tree.actions_to(n) for n in samples],
            sample_rewards=tree.reward[samples],
            best=tree.actions_to(best),
            best_reward=float(tree.reward[best]),
            root_value=float(tree.value[ROOT]),
            lam=self.config.lam,
            tree=tree,
            n_rollouts=self.rollouts_done,
            nfe_tokens=self.lm.stats.tokens - self._tokens0,
            forward_calls=self.lm.stats.forward_calls - self._calls0,
            wall_s=time.perf_counter() - self._start,
            interrupted=interrupted,
            tree_stats=tree.stats(),
        )
