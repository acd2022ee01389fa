"""Tree search over LM actions: MaxEnt-TS and the baselines that share its tree and accounting.

MaxEnt-TS samples π*(x) ∝ p(x|c) exp(λ r(x)); it is the token-level form of Diffusion Tree
Sampling (Jain et al., NeurIPS 2025, Algorithms 1-2). One iteration, for a batch of B leaves:

1. Select: descend from the root sampling `a ∝ p(a|s) exp(λ Ṽ(s·a))` (Gumbel-max), where Ṽ is
   the child's soft value or, for an unvisited child, the parent's own V̂(s); stop at the first
   unvisited child (a new leaf) or at a known terminal. A share ε (`defensive`) of descents draws
   from the rollout policy instead, and every draw is weighted by the mixture of both laws (`DescentLaw`).
2. Expand + roll out: one batched LM pass extends all new leaves and samples p to a terminal;
   every state of the rollout joins the tree with its full prior vector (full expansion costs
   nothing extra: the rollout's forward already computed it).
3. Score the terminals with the reward (one vectorised call).
4. Back up along each path, recomputing `V̂(s)` from the children (`search.backup`).

All B selections of an iteration see the tree as it was before the iteration. Boltzmann selection
is a sampler, so two selections landing on the same leaf are two independent rollouts below it,
not wasted work, and results do not depend on B beyond sampling noise (tested). The argmax rules
(UCT, PUCT) would all pick the same leaf, so a selection adds a virtual visit to every node on its
path (`Tree.pending`), which the later selections of the same iteration count as visits (the hybrid's
α counts them too, `search.values`); each selection records the law it drew from, so its importance
weight is exact whatever the batch.

Samples come from the finished tree without model calls (DTS Alg. 2): descend among visited
children with weights `w(c) exp(λ V̂(c))`, the weights the backup normalises.

Methods (`SearchConfig.method`, strategies in `search.methods`), one NFE accounting for all (LM
token positions, `lm.stats`); the values each role reads are `search.values`, the final samplers
`search.tree_sampling`:

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
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.lm.backend import LMBackend
from sadt.policy import masked_log_softmax, proposal_log_probs
from sadt.rewards import checked_rewards
from sadt.rollout import rollout
from search.backup import mean_backup, soft_backup
from search.config import METHODS, SMC_METHODS, RewardFn, SearchConfig, SearchResult
from search.draws import DEFENSIVE_RULES, DescentLaw, Draw, LawHistory
from search.methods import METHOD_STRATEGIES, Pick
from search.selection import gumbel_max
from search.task import Task
from search.tree import ROOT, Tree
from search.tree_sampling import final_samples, resampled_draws
from search.values import TreeValues

__all__ = ["METHODS", "Draw", "RewardFn", "SearchConfig", "SearchResult", "TreeSearch"]


class TreeSearch:
    """Tree search over an LM prior restricted by a grammar; `config.method` picks the algorithm.

    Args:
        lm: the torch (or MLX) backend.
        task: the prompt, actions, grammar and reward (`search.task.Task`).
        config: method, λ, budget, batch size, seed.
        value_head: a head or value (`sadt.value.Value`, bound by `task.value`) for the hybrid (`config.hybrid`),
            read from the hidden states the search's own forwards compute.
    """

    def __init__(
        self,
        lm: LMBackend,
        task: Task,
        config: SearchConfig,
        value_head=None,
    ) -> None:
        if config.method in SMC_METHODS:
            raise ValueError(f"method {config.method!r} is a particle sampler: use search.smc.SMC or make_sampler")
        if config.needs_head != (value_head is not None):
            raise ValueError("a value_head is needed by, and only used by, `hybrid` or method 'flow'")
        grammar, prompt_ids = task.grammar, task.prompt_ids
        self.lm, self.grammar, self.reward_fn, self.config = lm, grammar, task.reward_fn, config
        self.method = METHOD_STRATEGIES[config.method]
        self.epsilon = config.defensive_share  # maxent_ts's and dts's defensive share (0 for the other methods);
        # it moves between iterations under `defensive_adapt`
        self.value_head = value_head = task.value(value_head, config.lam)
        self.action_token_ids = list(task.action_token_ids)
        self.top_k = self.method.top_k if self.method.top_k is not None else config.top_k
        self.rng = np.random.default_rng(config.seed)
        self.sample_rng = np.random.default_rng([config.seed, 1])  # in-tree samples: drawing them mid-run
        # (`run(until)` then `result()`) leaves the search's own random stream, and so its tree, unchanged
        self.generator = torch.Generator(device=lm.device).manual_seed(config.seed)
        n_actions = len(self.action_token_ids)  # a sparse tree under top_k: O(k) bytes a node, any vocabulary
        self.tree = Tree(n_actions, width=self.top_k if self.top_k and self.top_k < n_actions else None)
        self.values = TreeValues(self.tree, config.lam, config.head_mix)
        self._start = time.perf_counter()
        self._calls0, self._tokens0 = lm.stats.forward_calls, lm.stats.tokens  # the prompt's prefill counts too
        self.prompt = lm.prefill(prompt_ids)
        root = lm.extend(self.prompt, [[]], self.action_token_ids)
        mask = grammar.mask(grammar.initial(1, lm.device))
        root_q = None if value_head is None else value_head(root.hidden, lambda: [[]])[0].double().cpu().numpy()
        self.tree.set_prior(ROOT, masked_log_softmax(root.logits.double(), mask, self.top_k)[0].cpu().numpy(), root_q)
        self.rollouts_done = 0
        # Per iteration (reset by `iterate`): leaves picked per node, the draws counted, and each selection's
        # in-tree choices under every law that could have made them (`descent` while descending).
        self.pending_leaves: dict[int, dict[int, int]] = {}
        self._counted_draws: list[tuple[int, int]] = []
        self.descent = DescentLaw()
        self._pick_laws: list[DescentLaw] = []
        self.draws: list[Draw] = []  # maxent_ts: one record per draw, for the IS estimates and resampling
        self.law_history = LawHistory()  # each iteration's size, ε and backed-up values (`search.balance`)
        self.epsilon_rule = DEFENSIVE_RULES[config.share_rule]() if config.adapts_defensive else None  # moves ε
        self.timings = {"select": 0.0, "lm_rollout": 0.0, "reward": 0.0, "insert_backup": 0.0}  # seconds

    # -- what the strategies read -------------------------------------------------------------

    # Strategies work on a node's slots (`search.tree`): slot a is action a unless the tree is sparse.

    def child_log_weights(self, node: int | np.ndarray) -> np.ndarray:
        """log w(s, ·) of the soft backup and of Boltzmann selection/sampling: prior, or draw counts."""
        if self.method.child_weights == "draws":
            with np.errstate(divide="ignore"):
                return np.log(self.tree.draws[node].astype(np.float64))
        return self.tree.log_prior[node]

    @property
    def guided(self) -> bool:
        """Whether rollouts (and draws from the rollout policy) follow P_F rather than p."""
        return self.config.guides_rollouts

    def count_draw(self, node: int, slot: int) -> None:
        """A draw of the action in `slot` at `node` (undone if the iteration does not finish)."""
        self.tree.draws[node, slot] += 1
        self._counted_draws.append((node, slot))

    def rollout_log_probs(self, node: int) -> np.ndarray:
        """log q_roll(·|s) of the policy the rollouts draw from: P_F ∝ p exp(g Q_φ) when guided by a head, else p."""
        log_prior = self.tree.log_prior[node]
        if self.value_head is None or not self.guided:
            return log_prior
        return proposal_log_probs(torch.from_numpy(log_prior), torch.from_numpy(self.tree.q[node]),
                                  self.config.guide_lam).numpy()

    def choose(self, node: int, log_tree: np.ndarray) -> int:
        """A slot at `node` from the tree's law `log_tree`, or from the rollout policy on a defensive descent;
        its log-probabilities under p and both laws join `self.descent`."""
        log_roll = self.rollout_log_probs(node) if self.epsilon > 0 else None
        slot = gumbel_max(log_roll if self.descent.defensive else log_tree, self.rng)
        self.descent.log_prior += self.tree.log_prior[node, slot]
        self.descent.log_tree += log_tree[slot]
        if log_roll is not None:
            self.descent.log_roll += log_roll[slot]
        return slot

    def take(self, node: int, pick: Pick) -> int:
        """The slot a selection rule's `pick` names, or one drawn from its law (`choose`), counted as a draw from
        the rollout policy when the rule says it is one."""
        if pick.log_probs is None:
            return pick.slot
        slot = self.choose(node, pick.log_probs)
        if pick.is_draw or (self.descent.defensive and self.method.child_weights == "draws"):
            self.count_draw(node, slot)  # a defensive descent draws from p too: DTS's counts go on estimating p
        return slot

    def widening(self, node: int) -> float:
        """C (N(s) + 1)^α, counting this iteration's virtual visits."""
        visits = self.tree.visits[node] + self.tree.pending[node] + 1
        return self.config.widening_c * visits**self.config.widening_alpha

    def eligible_log_prior(self, node: int) -> np.ndarray:
        """log p(·|s), limited under `expansion: widening` to visited actions and the most likely few.

        The prior itself is not renormalised: the target stays p exp(λ r); widening only delays
        which actions selection may try.
        """
        log_prior = self.tree.log_prior[node]
        if self.config.expansion == "full":
            return log_prior
        ranked = np.argsort(-log_prior, kind="stable")[: int(np.ceil(self.widening(node)))]
        eligible = self.tree.children[node] >= 0
        eligible[ranked] = True
        return np.where(eligible, log_prior, -np.inf)

    # -- one iteration ----------------------------------------------------------------------

    def select(self) -> tuple[int, int]:
        """One descent: (parent, slot) of a new leaf, or (terminal node, -1). Adds virtual visits."""
        tree, node, epsilon = self.tree, ROOT, self.epsilon
        self.descent = DescentLaw(defensive=epsilon > 0 and self.rng.random() < epsilon)
        while True:
            slot = self.take(node, self.method.select(self, node))
            tree.pending[node] += 1  # after choosing: a descent's own visit does not count for itself
            child = int(tree.children[node, slot])
            if child < 0:
                leaves = self.pending_leaves.setdefault(node, {})
                leaves[slot] = leaves.get(slot, 0) + 1
                self._pick_laws.append(self.descent)
                return node, slot
            if tree.terminal[child]:
                tree.pending[child] += 1
                self._pick_laws.append(self.descent)
                return child, -1
            node = child

    def backup(self, terminals: Sequence[int]) -> np.ndarray:
        """Set terminals' values to their rewards and recompute every ancestor from its children; returns the
        nodes whose V̂ it set.

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
        on_any_path = np.concatenate(on_paths)
        np.add.at(tree.visits, on_any_path, 1)  # one visit per path through a node
        internal = np.unique(np.concatenate(on_paths[1:]))
        depths = tree.depth[internal]
        for depth in np.unique(depths)[::-1]:
            nodes = internal[depths == depth]
            children = tree.children[nodes]  # (n, A)
            if self.method.backup == "mean":
                tree.value[nodes] = mean_backup(tree.value[children], tree.visits[children], children >= 0)
            else:
                values, counted = self.values.backup(nodes)
                tree.value[nodes] = soft_backup(values, self.child_log_weights(nodes), counted, lam)
        return np.unique(on_any_path)

    def iterate(self, batch: int) -> list[int]:
        """Select `batch` leaves, roll the new ones out in one batched pass, score, insert, back up.

        Nodes are only added after the rollouts and rewards succeed, so a Ctrl-C or a failing reward
        mid-iteration leaves no node without a terminal below it; the selection's virtual visits and
        every draw it counted are undone.
        """
        try:
            return self._iterate(batch)
        except BaseException:
            for node, slot in self._counted_draws:
                self.tree.draws[node, slot] -= 1
            raise
        finally:
            self.tree.pending[: self.tree.size] = 0
            self.pending_leaves.clear()
            self._pick_laws.clear()
            self._counted_draws.clear()

    def _iterate(self, batch: int) -> list[int]:
        clock = time.perf_counter()
        size, epsilon = self.tree.size, self.epsilon  # what this iteration's law reads (`search.balance`)
        picks = [self.select() for _ in range(batch)]
        revisits = [node for node, action in picks if action < 0]  # known terminals: no LM call
        new = [(parent, self.tree.action_of(parent, slot)) for parent, slot in picks if slot >= 0]
        laws = [law for (_, a), law in zip(picks, self._pick_laws) if a < 0] + \
            [law for (_, a), law in zip(picks, self._pick_laws) if a >= 0]  # in the order of `terminals` below
        log_ratios = [law.log_ratio(self.epsilon) for law in laws]  # Σ log p − log q_mix of the in-tree choices
        suffixes = [[action] for _, action in new]  # actions below each parent: the new one, then the rollout's
        paths = [self.tree.actions_to(parent) + [action] for parent, action in new]
        step_log_probs: list[np.ndarray | None] = [None] * len(paths)  # (T, A) prior vectors along each rollout
        step_q: list[np.ndarray | None] = [None] * len(paths)  # (T, A) Q_φ along each rollout (hybrid only)
        step_actions: list[np.ndarray | None] = [None] * len(paths)  # (T, k) under top_k: what the vectors cover
        ended = self.grammar.replay(paths).done.tolist() if paths else []
        to_roll = [i for i, end in enumerate(ended) if not end]
        clock = self._tick("select", clock)
        if to_roll:
            out = rollout(
                self.lm, self.prompt, self.action_token_ids, self.grammar, [paths[i] for i in to_roll],
                top_k=self.top_k, generator=self.generator, return_step_log_probs=True, value_head=self.value_head,
                guide_lam=self.config.guide_lam if self.guided else 0.0,
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
                if out.step_actions is not None:
                    step_actions[i] = out.step_actions[row, :length].cpu().numpy()
        clock = self._tick("lm_rollout", clock)
        rewards = checked_rewards(self.reward_fn, paths) if paths else np.zeros(0)
        clock = self._tick("reward", clock)
        terminals = revisits + [
            self._insert(parent, suffix, log_probs, q, kept, reward) for (parent, _), suffix, log_probs, q, kept, reward
            in zip(new, suffixes, step_log_probs, step_q, step_actions, rewards)
        ]
        updated = self.backup(terminals)
        if self.method.records_draws:
            self.law_history.record(size, epsilon, batch, updated, self.tree.value[updated])
            log_weights = np.asarray(log_ratios) + self.config.lam * self.tree.reward[terminals]
            new_draws = [Draw(int(t), float(w), law.responsibility(self.epsilon), self.epsilon)
                         for t, w, law in zip(terminals, log_weights, laws)]
            self.draws += new_draws
            if self.epsilon_rule is not None:
                self.epsilon = self.epsilon_rule.update(new_draws, self.config.defensive_share,
                                                        self.config.defensive_adapt_prior)
        self.rollouts_done += batch
        self._tick("insert_backup", clock)
        return terminals

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] += now - since
        return now

    def _insert(
        self, parent: int, actions: list[int], step_log_probs: np.ndarray | None, step_q: np.ndarray | None,
        step_actions: np.ndarray | None, reward: float,
    ) -> int:
        """Add the path `actions` below `parent` (the rollout's states join the tree); returns its terminal.

        `step_log_probs[t]` (and `step_q[t]`) belong to the state after `actions[: t + 1]`, over all actions
        or over `step_actions[t]`.
        """
        tree = self.tree
        node = tree.add(parent, tree.slot_of(parent, actions[0]))
        for t, action in enumerate(actions[1:]):
            tree.set_prior(node, step_log_probs[t], None if step_q is None else step_q[t],
                           None if step_actions is None else step_actions[t])
            slot = tree.slot_of(node, action)
            tree.draws[node, slot] += 1  # a rollout step is a draw from the prior
            node = tree.add(node, slot)
        self.tree.terminal[node] = True
        self.tree.reward[node] = reward
        return node

    # -- samples and the result ---------------------------------------------------------------

    @property
    def draw_log_weights(self) -> np.ndarray:
        """log [p(x) exp(λ r(x)) / q(x)] of every draw so far, in order (maxent_ts)."""
        return np.array([d.log_weight for d in self.draws], dtype=np.float64)

    @property
    def draw_terminals(self) -> np.ndarray:
        """The terminal node of every draw so far, in order (maxent_ts)."""
        return np.array([d.terminal for d in self.draws], dtype=np.int64)

    def sample(self, n: int) -> list[int]:
        """n terminal node ids by the method's final sampler (`search.tree_sampling.final_samples`)."""
        return final_samples(self, self.method.sample, n)

    def resample_draws(self, n: int) -> list[int]:
        """n terminal node ids drawn with replacement from the search's draws ∝ p(x) exp(λ r(x)) / q(x)
        (sampling importance resampling; maxent_ts). Consistent for π* as the draws grow, whatever the
        selection did, where the in-tree sampler's prior-weighted values are biased at small budgets."""
        return resampled_draws(self, n)

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
            draw_log_weights=self.draw_log_weights,
        )
