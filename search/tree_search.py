"""Tree search over LM actions: MaxEnt-TS and the baselines that share its tree and accounting.

MaxEnt-TS samples π*(x) ∝ p(x|c) exp(λ r(x)); it is the token-level form of Diffusion Tree
Sampling (Jain et al., NeurIPS 2025, Algorithms 1-2). One iteration, for a batch of B leaves:

1. Select: descend from the root sampling `a ∝ p(a|s) exp(λ Ṽ(s·a))` (Gumbel-max), where Ṽ is
   the child's soft value or, for an unvisited child, the parent's own V̂(s); stop at the first
   unvisited child (a new leaf) or at a known terminal.
2. Expand + roll out: one batched LM pass extends all new leaves and samples p to a terminal;
   every state of the rollout joins the tree with its full prior vector (full expansion costs
   nothing extra: the rollout's forward already computed it).
3. Score the terminals with the reward (one vectorised call).
4. Back up along each path, recomputing `V̂(s)` from the children (`search.backup`).

All B selections of an iteration see the tree as it was before the iteration. Boltzmann selection
is a sampler, so two selections landing on the same leaf are two independent rollouts below it,
not wasted work, and results do not depend on B beyond sampling noise (tested). The argmax rules
(UCT, PUCT) would all pick the same leaf, so a selection adds a virtual visit to every node on its
path (`Tree.pending`), which the later selections of the same iteration count as visits.

Samples come from the finished tree without model calls (DTS Alg. 2): descend among visited
children with weights `w(c) exp(λ V̂(c))`, the weights the backup normalises.

Methods (`SearchConfig.method`), one NFE accounting for all (LM token positions, `lm.stats`):

| method      | children            | select                         | backup                     | samples        |
|-------------|---------------------|--------------------------------|----------------------------|----------------|
| maxent_ts   | all allowed tokens  | Boltzmann, prior weights       | soft, prior-weighted       | Boltzmann      |
| dts         | drawn from p, C·N^α | Boltzmann, draw-count weights  | soft, equal weight per draw | Boltzmann      |
| dts_star    | drawn from p, C·N^α | UCT                            | soft, equal weight per draw | argmax V̂ path  |
| mcts_uct    | all allowed tokens  | PUCT                           | mean                       | most visited   |
| ancestral   | drawn from p        | draw from p at every node      | soft (for the root value)  | the rollouts   |
| best_of_n   | drawn from p        | draw from p at every node      | soft                       | top rewards    |
| greedy      | ancestral with the prior truncated to its top 1: one sequence, later rollouts cost nothing |
| flow        | ancestral from the flow head's P_F ∝ p exp(λ Q_φ) (needs a value head): no tree search |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.lm.backend import LMBackend
from sadt.rewards import checked_rewards
from sadt.rollout import head_q, masked_log_softmax, rollout
from search import selection
from search.backup import logsumexp, mean_backup, soft_backup
from search.smc import SMC_METHODS  # particle samplers, configured by the same SearchConfig
from search.tree import ROOT, Tree

METHODS = ("maxent_ts", "dts", "dts_star", "mcts_uct", "ancestral", "best_of_n", "greedy", "flow")
DRAWN_CHILDREN = ("dts", "dts_star", "ancestral", "best_of_n", "greedy", "flow")  # children are draws
PRIOR_DESCENT = ("ancestral", "best_of_n", "greedy", "flow")  # selection draws from p (P_F for flow) everywhere
HEAD_METHODS = ("flow", "twisted_smc")  # methods that need a value head whatever `hybrid` says

RewardFn = Callable[[list[list[int]]], np.ndarray]  # B action sequences -> (B,) rewards


@dataclass(frozen=True)
class SearchConfig:
    method: str = "maxent_ts"  # one of METHODS or SMC_METHODS
    lam: float = 1.0  # inverse temperature λ > 0 of the target p(x) exp(λ r(x))
    n_rollouts: int = 64  # rollout budget (iterations x batch)
    batch_size: int = 16  # leaves selected, expanded and rolled out per iteration
    n_samples: int = 32  # samples drawn from the finished tree
    top_k: int | None = None  # truncate the prior to its k most likely allowed actions (target changes too)
    expansion: str = "full"  # maxent_ts / mcts_uct: "full" (every allowed action) or "widening" (see below)
    widening_c: float = 1.0  # widening: a node may use its ceil(C (N(s)+1)^α) most likely actions (maxent_ts,
    # mcts_uct), or draws a new child while its draws < C (N(s)+1)^α (dts, dts_star)
    widening_alpha: float = 0.5
    uct_c: float = 1.0  # exploration constant of UCT (dts_star) and PUCT (mcts_uct), in reward units
    hybrid: str = "off"  # maxent_ts with a flow head: "visits" (α = n0 / (n0 + N)) or "fixed" (α = hybrid_alpha)
    hybrid_n0: float = 10.0  # visits at which Monte-Carlo and Q_φ weigh equally
    hybrid_alpha: float = 0.5  # the fixed mixing weight
    hybrid_offset: bool = False  # visits: correct Q_φ(s, ·) by the MC-minus-head gap on s's visited children
    guided_rollouts: bool = True  # hybrid: roll out from P_F (below) rather than p (values stay unbiased)
    guide_scale: float = 1.0  # guided rollouts and method flow draw from P_F ∝ p exp(guide_scale · λ Q_φ): below 1
    # a tempered P_F, wider than the head's own (benchmarks/proposal_quality.py measures which covers π* best)
    sampling: str = "tree"  # maxent_ts: "tree" draws samples from the finished tree without model calls (DTS
    # Alg. 2, visited children only); "search" makes each sample one more selection + rollout (it may leave the
    # tree, as the hybrid's Q_φ invites; costs n_samples rollouts, counted); "resample" resamples the search's
    # draws by their importance weights p e^{λr} / q (`TreeSearch.resample_draws`; no model calls)
    ess_threshold: float = 0.5  # smc / twisted_smc: resample when ESS < ess_threshold · particles (n_rollouts)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS + SMC_METHODS:
            raise ValueError(f"search `method` must be one of {METHODS + SMC_METHODS}, got {self.method!r}")
        if not self.lam > 0:
            raise ValueError(f"search `lam` must be > 0 (inverse temperature), got {self.lam}")
        for name in ("n_rollouts", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"search `{name}` must be >= 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"search `top_k` must be >= 1 or null, got {self.top_k}")
        if not (self.widening_c > 0 and 0 <= self.widening_alpha <= 1):
            raise ValueError(
                f"search widening needs `widening_c` > 0 and `widening_alpha` in [0, 1], "
                f"got {self.widening_c} and {self.widening_alpha}"
            )
        if self.expansion not in ("full", "widening"):
            raise ValueError(f"search `expansion` must be 'full' or 'widening', got {self.expansion!r}")
        if self.hybrid not in ("off", "visits", "fixed"):
            raise ValueError(f"search `hybrid` must be 'off', 'visits' or 'fixed', got {self.hybrid!r}")
        if self.hybrid != "off" and self.method != "maxent_ts":
            raise ValueError(f"search `hybrid` needs method maxent_ts, got {self.method!r}")
        if self.hybrid_offset and self.hybrid != "visits":
            raise ValueError(f"search `hybrid_offset` needs hybrid: visits, got {self.hybrid!r}")
        if self.hybrid_n0 < 0 or not 0 <= self.hybrid_alpha <= 1:
            raise ValueError(
                f"search needs hybrid_n0 >= 0 and hybrid_alpha in [0, 1], got {self.hybrid_n0}, {self.hybrid_alpha}"
            )
        if not self.guide_scale > 0:
            raise ValueError(f"search `guide_scale` must be > 0 (guided_rollouts: false rolls out from p), "
                             f"got {self.guide_scale}")
        if self.uct_c < 0:
            raise ValueError(f"search `uct_c` must be >= 0, got {self.uct_c}")
        if self.sampling not in ("tree", "search", "resample"):
            raise ValueError(f"search `sampling` must be 'tree', 'search' or 'resample', got {self.sampling!r}")
        if self.sampling != "tree" and self.method != "maxent_ts":
            raise ValueError(f"search `sampling: {self.sampling}` needs method maxent_ts, got {self.method!r}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"search `ess_threshold` must be in [0, 1], got {self.ess_threshold}")

    @property
    def guide_lam(self) -> float:
        """The inverse temperature of P_F ∝ p exp(guide_lam · Q_φ): guide_scale · λ."""
        return self.guide_scale * self.lam

    @property
    def needs_head(self) -> bool:
        """Whether this configuration reads a flow head's Q_φ."""
        return self.hybrid != "off" or self.method in HEAD_METHODS


@dataclass
class SearchResult:
    samples: list[list[int]]  # action sequences drawn from the finished tree
    sample_nodes: np.ndarray  # (n_samples,) their terminal node ids (for `tree.trajectories(sample_nodes)`)
    sample_rewards: np.ndarray  # (n_samples,) their actual rewards
    best: list[int]  # the highest-reward terminal the search saw
    best_reward: float  # its actual reward (not a value estimate)
    root_value: float  # V̂(root): the estimate of (1/λ) log Z (the mean return for mcts_uct)
    lam: float
    method: str
    tree: Tree
    n_rollouts: int  # rollouts completed (fewer than asked if interrupted)
    nfe_tokens: int  # LM token positions processed, prompt included
    forward_calls: int
    wall_s: float
    interrupted: bool = False
    tree_stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds per phase: select, lm_rollout, reward, insert_backup
    draw_log_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # maxent_ts: see `root_value_is`

    @property
    def log_Z(self) -> float:
        return self.lam * self.root_value

    @property
    def root_value_is(self) -> float:
        """(1/λ) log of the importance-sampling estimate of Z from every draw (maxent_ts; NaN otherwise):

            Ẑ = (1/N) Σ_i p(x_i) exp(λ r(x_i)) / q_i(x_i),

        q_i the probability that draw i's descent (Boltzmann choices) and rollout (p, or P_F under the
        hybrid) gave x_i, computed when it was drawn. Each term has mean Z given the draws before it,
        so Ẑ is unbiased however adaptive the search, and its log is low only by Jensen's gap; V̂(root)
        has no such guarantee. Exact under full expansion; widening, or top_k with guided rollouts, give
        some actions of p's support q = 0.
        """
        w = self.draw_log_weights
        return float((logsumexp(w) - np.log(w.size)) / self.lam) if w.size else float("nan")

    @property
    def draws_ess(self) -> float:
        """Effective sample size (Σ w)² / Σ w² of the draws' importance weights."""
        w = self.draw_log_weights
        return float(np.exp(2 * logsumexp(w) - logsumexp(2 * w))) if w.size else float("nan")


class TreeSearch:
    """Tree search over an LM prior restricted by a grammar; `config.method` picks the algorithm.

    Args:
        lm: the torch backend.
        prompt_ids: the context's token ids.
        action_token_ids: (A,) vocabulary id of each action index.
        grammar: allowed actions per state (`initial`, `mask`, `advance`, `replay`).
        reward_fn: terminal action sequences -> rewards (B,).
        config: method, λ, budget, batch size, seed.
        value_head: `hidden (B, H) -> Q_φ (B, A)` for the hybrid (`config.hybrid`), read from the
            hidden states the search's own forwards compute.
    """

    def __init__(
        self,
        lm: LMBackend,
        prompt_ids: Sequence[int],
        action_token_ids: Sequence[int],
        grammar,
        reward_fn: RewardFn,
        config: SearchConfig,
        value_head=None,
    ) -> None:
        if config.method in SMC_METHODS:
            raise ValueError(f"method {config.method!r} is a particle sampler: use search.smc.SMC or make_sampler")
        if config.needs_head != (value_head is not None):
            raise ValueError("a value_head is needed by, and only used by, `hybrid` or method 'flow'")
        self.lm, self.grammar, self.reward_fn, self.config = lm, grammar, reward_fn, config
        self.value_head = value_head
        self.action_token_ids = list(action_token_ids)
        self.top_k = 1 if config.method == "greedy" else config.top_k
        self.rng = np.random.default_rng(config.seed)
        self.sample_rng = np.random.default_rng([config.seed, 1])  # in-tree samples: drawing them mid-run
        # (`run(until)` then `result()`) leaves the search's own random stream, and so its tree, unchanged
        self.generator = torch.Generator(device=lm.device).manual_seed(config.seed)
        self.tree = Tree(len(self.action_token_ids))
        self._start = time.perf_counter()
        self._calls0, self._tokens0 = lm.stats.forward_calls, lm.stats.tokens  # the prompt's prefill counts too
        self.prompt = lm.prefill(prompt_ids)
        root = lm.extend(self.prompt, [[]], self.action_token_ids)
        mask = grammar.mask(grammar.initial(1, lm.device))
        self.tree.log_prior[ROOT] = masked_log_softmax(root.logits.double(), mask, self.top_k)[0].cpu().numpy()
        if value_head is not None:
            self.tree.q[ROOT] = head_q(value_head, root.hidden, lambda: [[]])[0].double().cpu().numpy()
        self.rollouts_done = 0
        self._pending_leaves: dict[int, dict[int, int]] = {}  # node -> action -> picks this iteration
        self._descent_log_ratio = 0.0  # Σ log p(a|s) − log q(a|s) over the current descent's Boltzmann choices
        self._pick_log_ratios: list[float] = []  # one per selection of this iteration
        self.draw_log_weights: list[float] = []  # maxent_ts: log [p(x) exp(λ r(x)) / q(x)] of every draw so far
        self.draw_terminals: list[int] = []  # the terminal node of each draw
        self.timings = {"select": 0.0, "lm_rollout": 0.0, "reward": 0.0, "insert_backup": 0.0}  # seconds

    # -- selection ---------------------------------------------------------------------------

    def _child_log_weights(self, node: int | np.ndarray) -> np.ndarray:
        """log w(s, ·) of the soft backup and of Boltzmann selection/sampling: prior, or draw counts."""
        if self.config.method in DRAWN_CHILDREN:
            with np.errstate(divide="ignore"):
                return np.log(self.tree.draws[node].astype(np.float64))
        return self.tree.log_prior[node]

    def _draw_from_prior(self, node: int) -> int:
        """A draw from p(·|s), or from P_F ∝ p exp(guide_scale · λ Q_φ) for method flow; counted in `draws`."""
        log_prior = self.tree.log_prior[node]
        if self.config.method == "flow":
            log_prior = log_prior + self.config.guide_lam * self.tree.q[node]
        action = int(np.argmax(log_prior + self.rng.gumbel(size=log_prior.shape)))
        self.tree.draws[node, action] += 1
        return action

    def _widening(self, node: int) -> float:
        """C (N(s) + 1)^α, counting this iteration's virtual visits."""
        visits = self.tree.visits[node] + self.tree.pending[node] + 1
        return self.config.widening_c * visits**self.config.widening_alpha

    def _eligible_log_prior(self, node: int) -> np.ndarray:
        """log p(·|s), limited under `expansion: widening` to visited actions and the most likely few.

        The prior itself is not renormalised: the target stays p exp(λ r); widening only delays
        which actions selection may try.
        """
        log_prior = self.tree.log_prior[node]
        if self.config.expansion == "full":
            return log_prior
        n_eligible = int(np.ceil(self._widening(node)))
        ranked = np.argsort(-log_prior, kind="stable")[:n_eligible]
        eligible = self.tree.children[node] >= 0
        eligible[ranked] = True
        return np.where(eligible, log_prior, -np.inf)

    def _hybrid_values(self, nodes: int | np.ndarray, shrink: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Ṽ(s·a) = (1 − α) V̂(s·a) + α Q_φ(s,a) over actions, and which children count in a backup.

        `visits`: α = n0 / (n0 + N(s·a)), so an unvisited child is Q_φ alone and counts in the
        backup. `fixed`: α = hybrid_alpha; an unvisited child is (1 − α) V̂(s) + α Q_φ for
        selection and does not count (with α = 0 this is MC-only MaxEnt-TS exactly).
        Without a hybrid: V̂ of visited children; unvisited ones are V̂(s) and do not count.

        `shrink=False` (the backup) drops the mixing of visited children (α = 0 where N > 0): the
        backup is the full Bellman backup with Q_φ standing in for unvisited children only. Mixing
        in the backup compounds: a fresh rollout's nodes have one visit each, so with α = 1/2 the
        reward reaches a node d levels up with weight 2^-d (on the toy the root error at 20
        rollouts was 6× larger). Selection still shrinks young children towards Q_φ.

        `hybrid_offset` (visits): Q_φ(s, ·) is first moved by δ(s) (`_head_offset`), the gap
        between the visited children's Monte-Carlo values and the head's on those same children.
        An exact head stays exact either way (δ = 0).
        """
        tree, config = self.tree, self.config
        children = tree.children[nodes]
        visited = children >= 0
        mc = np.where(visited, tree.value[children], np.asarray(tree.value[nodes])[..., None])
        if config.hybrid == "off":
            return mc, visited
        q = tree.q[nodes]
        if config.hybrid == "visits":
            if config.hybrid_offset:
                q = q + self._head_offset(nodes, mc, q, visited)[..., None]
            n = np.where(visited, tree.visits[children] + tree.pending[children], 0)
            n0 = config.hybrid_n0 if shrink else 0.0
            alpha = n0 / (n0 + n) if n0 > 0 else (n == 0).astype(float)
            return (1 - alpha) * mc + alpha * q, visited | np.isfinite(tree.log_prior[nodes])
        alpha = config.hybrid_alpha if shrink else 0.0
        return (1 - alpha) * mc + alpha * q, visited

    def _head_offset(self, nodes: int | np.ndarray, mc: np.ndarray, q: np.ndarray, visited: np.ndarray) -> np.ndarray:
        """δ(s) = soft_p(V̂) − soft_p(Q_φ) over s's visited children; 0 where none is visited.

        soft_p(X) = (1/λ) log Σ_{visited} p(a|s) exp(λ X(s·a)) / Σ_{visited} p(a|s). Shifting every
        Q_φ(s, ·) by δ(s) makes the head a control variate: it supplies how unvisited children
        differ from the visited ones, Monte-Carlo supplies the level. With one visited child,
        V̂(s) = V_φ(s) + V̂(s·a) − Q_φ(s,a), so a rollout's surprise reaches the root undiluted,
        where Q_φ alone for unvisited children would dilute it by the prior mass the rollout covers
        (and any partial trust in δ compounds to 0 over a 50-token chain of one-visit nodes).
        A head off by a constant on an unseen prompt is thus corrected exactly.
        """
        lam = self.config.lam
        any_visited = visited.any(axis=-1)
        rows = visited | ~np.asarray(any_visited)[..., None]  # rows with no visited child: placeholder, zeroed
        log_p = self.tree.log_prior[nodes]
        delta = soft_backup(mc, log_p, rows, lam) - soft_backup(q, log_p, rows, lam)
        return np.where(any_visited, delta, 0.0)

    def _choose(self, node: int) -> int:
        """The action taken at `node` during selection."""
        tree, config = self.tree, self.config
        children = tree.children[node]
        visited = children >= 0
        method = config.method
        if method in PRIOR_DESCENT:
            return self._draw_from_prior(node)
        if method in ("dts", "dts_star"):
            if tree.draws[node].sum() < self._widening(node) or not visited.any():
                return self._draw_from_prior(node)
            if method == "dts":
                log_w = self._child_log_weights(node)
                action, _ = selection.boltzmann(log_w, tree.value[children], visited, tree.value[node], config.lam,
                                                self.rng)
                return action
            visits = tree.visits[children] + tree.pending[children]
            parent_visits = tree.visits[node] + tree.pending[node]
            return selection.uct(tree.value[children], visits, visited, parent_visits, config.uct_c)
        if method == "mcts_uct":
            visits = np.where(visited, tree.visits[children] + tree.pending[children], 0)
            for action, count in self._pending_leaves.get(node, {}).items():
                visits[action] += count  # leaves already picked in this iteration count as visited
            return selection.puct(
                tree.value[children], self._eligible_log_prior(node), visits, visited, tree.value[node],
                tree.visits[node] + tree.pending[node], config.uct_c,
            )
        values, _ = self._hybrid_values(node)  # unvisited children: V̂(s), or Q_φ under the hybrid
        action, log_q = selection.boltzmann(
            self._eligible_log_prior(node), values, np.ones_like(visited), tree.value[node], config.lam, self.rng
        )
        self._descent_log_ratio += tree.log_prior[node, action] - log_q
        return action

    def select(self) -> tuple[int, int]:
        """One descent: (parent, action) of a new leaf, or (terminal node, -1). Adds virtual visits."""
        tree, node = self.tree, ROOT
        self._descent_log_ratio = 0.0
        while True:
            action = self._choose(node)
            tree.pending[node] += 1  # after choosing: a descent's own visit does not count for itself
            child = int(tree.children[node, action])
            if child < 0:
                leaves = self._pending_leaves.setdefault(node, {})
                leaves[action] = leaves.get(action, 0) + 1
                self._pick_log_ratios.append(self._descent_log_ratio)
                return node, action
            if tree.terminal[child]:
                tree.pending[child] += 1
                self._pick_log_ratios.append(self._descent_log_ratio)
                return child, -1
            node = child

    # -- backup ------------------------------------------------------------------------------

    def backup(self, terminals: Sequence[int]) -> None:
        """Set terminals' values to their rewards and recompute every ancestor from its children.

        All paths at once, deepest level first, one vectorised backup per level: the same values
        as backing up each path in turn (each node is recomputed after all of its children).
        """
        tree, lam = self.tree, self.config.lam
        level = np.asarray(terminals, dtype=np.int64)
        tree.value[level] = tree.reward[level]
        on_paths = [level]
        while level.size:
            level = tree.parent[level].astype(np.int64)
            level = level[level >= 0]
            on_paths.append(level)
        np.add.at(tree.visits, np.concatenate(on_paths), 1)  # one visit per path through a node
        internal = np.unique(np.concatenate(on_paths[1:]))
        depths = tree.depth[internal]
        for depth in np.unique(depths)[::-1]:
            nodes = internal[depths == depth]
            children = tree.children[nodes]  # (n, A)
            visited = children >= 0
            if self.config.method == "mcts_uct":
                tree.value[nodes] = mean_backup(tree.value[children], tree.visits[children], visited)
            else:
                values, counted = self._hybrid_values(nodes, shrink=False)
                tree.value[nodes] = soft_backup(values, self._child_log_weights(nodes), counted, lam)

    def iterate(self, batch: int) -> list[int]:
        """Select `batch` leaves, roll the new ones out in one batched pass, score, insert, back up.

        Nodes are only added after the rollouts and rewards succeed, so a Ctrl-C or a failing reward
        mid-iteration leaves no node without a terminal below it; the selection's virtual visits and
        its draws of actions that got no child are undone.
        """
        try:
            return self._iterate(batch)
        except BaseException:
            size = self.tree.size
            self.tree.draws[:size][self.tree.children[:size] < 0] = 0
            raise
        finally:
            self.tree.pending[: self.tree.size] = 0
            self._pending_leaves.clear()
            self._pick_log_ratios.clear()

    def _iterate(self, batch: int) -> list[int]:
        clock = time.perf_counter()
        picks = [self.select() for _ in range(batch)]
        revisits = [node for node, action in picks if action < 0]  # known terminals: no LM call
        new = [(parent, action) for parent, action in picks if action >= 0]
        log_ratios = [r for (_, a), r in zip(picks, self._pick_log_ratios) if a < 0] + \
            [r for (_, a), r in zip(picks, self._pick_log_ratios) if a >= 0]  # in the order of `terminals` below
        suffixes = [[action] for _, action in new]  # actions below each parent: the new one, then the rollout's
        paths = [self.tree.actions_to(parent) + [action] for parent, action in new]
        step_log_probs: list[np.ndarray | None] = [None] * len(paths)  # (T, A) prior vectors along each rollout
        step_q: list[np.ndarray | None] = [None] * len(paths)  # (T, A) Q_φ along each rollout (hybrid only)
        ended = self.grammar.replay(paths).done.tolist() if paths else []
        to_roll = [i for i, end in enumerate(ended) if not end]
        clock = self._tick("select", clock)
        if to_roll:
            out = rollout(
                self.lm, self.prompt, self.action_token_ids, self.grammar, [paths[i] for i in to_roll],
                top_k=self.top_k, generator=self.generator, return_step_log_probs=True, value_head=self.value_head,
                guide_lam=self.config.guide_lam if self.config.guided_rollouts or self.config.method == "flow" else 0.0,
            )
            for row, i in enumerate(to_roll):
                length = int(out.lengths[row])
                suffixes[i] += out.actions[row, :length].tolist()
                paths[i] = paths[i] + suffixes[i][1:]
                step_log_probs[i] = out.step_log_probs[row, :length].cpu().numpy()
                rolled = out.log_prior[row, :length] - out.log_proposal[row, :length]  # 0 unless guided
                log_ratios[len(revisits) + i] += float(rolled.sum())
                if out.step_q is not None:
                    step_q[i] = out.step_q[row, :length].cpu().numpy()
        clock = self._tick("lm_rollout", clock)
        rewards = checked_rewards(self.reward_fn, paths) if paths else np.zeros(0)
        clock = self._tick("reward", clock)
        terminals = revisits + [
            self._insert(parent, suffix, log_probs, q, reward)
            for (parent, _), suffix, log_probs, q, reward in zip(new, suffixes, step_log_probs, step_q, rewards)
        ]
        self.backup(terminals)
        if self.config.method == "maxent_ts":
            self.draw_log_weights += (np.asarray(log_ratios) + self.config.lam * self.tree.reward[terminals]).tolist()
            self.draw_terminals += terminals
        self.rollouts_done += batch
        self._tick("insert_backup", clock)
        return terminals

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] += now - since
        return now

    def _insert(
        self, parent: int, actions: list[int], step_log_probs: np.ndarray | None, step_q: np.ndarray | None,
        reward: float,
    ) -> int:
        """Add the path `actions` below `parent` (the rollout's states join the tree); returns its terminal.

        `step_log_probs[t]` (and `step_q[t]`) belong to the state after `actions[: t + 1]`.
        """
        node = self.tree.add(parent, actions[0])
        for t, action in enumerate(actions[1:]):
            self.tree.log_prior[node] = step_log_probs[t]
            if step_q is not None:
                self.tree.q[node] = step_q[t]
            self.tree.draws[node, action] += 1  # a rollout step is a draw from the prior
            node = self.tree.add(node, action)
        self.tree.terminal[node] = True
        self.tree.reward[node] = reward
        return node

    def sample(self, n: int) -> list[int]:
        """Terminal node ids from the finished tree, without model calls (unless `sampling: search`).

        `sampling: resample` (maxent_ts): `resample_draws`.

        `sampling: search` (maxent_ts): each sample is one more Boltzmann selection, rolled out
        (guided by P_F under the hybrid) when it reaches an unvisited child, and backed up.
        Otherwise, Boltzmann methods descend among visited children with weights `w(c) exp(λ V̂(c))` (DTS
        Alg. 2; for `ancestral` λ = 0, i.e. the empirical distribution of the rollouts); dts_star
        follows the argmax-V̂ path, mcts_uct the most visited one, best_of_n returns its n best.
        """
        method = self.config.method
        if self.config.sampling == "resample":
            return self.resample_draws(n)
        if self.config.sampling == "search":
            terminals: list[int] = []
            while len(terminals) < n:
                terminals += self.iterate(min(self.config.batch_size, n - len(terminals)))
            return terminals
        if method == "best_of_n":
            terminals = np.flatnonzero(self.tree.terminal[: self.tree.size])
            ranked = terminals[np.argsort(-self.tree.reward[terminals], kind="stable")]
            return [int(ranked[i % ranked.size]) for i in range(n)]
        if method in ("dts_star", "mcts_uct"):
            return [self._greedy_path()] * n
        lam = 0.0 if method in ("ancestral", "greedy", "flow") else self.config.lam
        return [self._boltzmann_descent(lam) for _ in range(n)]

    def resample_draws(self, n: int) -> list[int]:
        """n terminal node ids drawn with replacement from the search's draws ∝ p(x) exp(λ r(x)) / q(x)
        (sampling importance resampling; maxent_ts). Consistent for π* as the draws grow, whatever the
        selection did, where the in-tree sampler's prior-weighted values are biased at small budgets."""
        if not self.draw_log_weights:
            raise RuntimeError("resample_draws needs method maxent_ts and at least one finished rollout")
        log_w = np.asarray(self.draw_log_weights)
        probs = np.exp(log_w - logsumexp(log_w))
        return self.sample_rng.choice(np.asarray(self.draw_terminals), size=n, p=probs / probs.sum()).tolist()

    def _boltzmann_descent(self, lam: float) -> int:
        tree, node = self.tree, ROOT
        while not tree.terminal[node]:
            children = tree.children[node]
            visited = children >= 0
            values = self._hybrid_values(node)[0] if self.config.method == "maxent_ts" else tree.value[children]
            logits = np.where(visited, self._child_log_weights(node) + lam * values, -np.inf)
            node = int(children[np.argmax(logits + self.sample_rng.gumbel(size=logits.shape))])
        return node

    def _greedy_path(self) -> int:
        """Follow the highest V̂ (dts_star) or most visited (mcts_uct) child down to a terminal."""
        tree, node = self.tree, ROOT
        key = tree.value if self.config.method == "dts_star" else tree.visits
        while not tree.terminal[node]:
            children = tree.children[node]
            node = int(children[np.argmax(np.where(children >= 0, key[children], -np.inf))])
        return node

    def run(self, until: int | None = None) -> SearchResult:
        """Spend the rollout budget, or go on up to `until` rollouts in all (Ctrl-C stops early and
        still returns the result so far).

        `run(20)`, `run(50)`, ... on one search gives the anytime curve of a single run: with
        `sampling: tree` the samples are drawn from their own random stream, so drawing them does
        not change the tree: after 50 rollouts it is the tree a 50-rollout search with this seed
        grows, exactly so when every stop is a multiple of `batch_size`.
        """
        config, interrupted = self.config, False
        until = config.n_rollouts if until is None else until
        with tqdm(total=until, initial=self.rollouts_done, desc=config.method, unit="rollout",
                  disable=not config.progress) as bar:
            try:
                while self.rollouts_done < until:
                    batch = min(config.batch_size, until - self.rollouts_done)
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
            sample_nodes=np.asarray(samples, dtype=np.int64),
            sample_rewards=tree.reward[samples],
            best=tree.actions_to(best),
            best_reward=float(tree.reward[best]),
            root_value=float(tree.value[ROOT]),
            lam=self.config.lam,
            method=self.config.method,
            tree=tree,
            n_rollouts=self.rollouts_done,
            nfe_tokens=self.lm.stats.tokens - self._tokens0,
            forward_calls=self.lm.stats.forward_calls - self._calls0,
            wall_s=time.perf_counter() - self._start,
            interrupted=interrupted,
            tree_stats=tree.stats(),
            timings=dict(self.timings),
            draw_log_weights=np.asarray(self.draw_log_weights, dtype=np.float64),
        )
