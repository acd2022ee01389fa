"""What a search is asked to do (`SearchConfig`) and what it returns (`SearchResult`), for every method.

The methods themselves are `search.methods` (tree methods) and `search.smc` (particle methods).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sadt.config import check_finite
from sadt.importance import effective_sample_size, log_mean_exp
from search.smc import SMC_METHODS  # particle samplers, configured by the same SearchConfig
from search.task import RewardFn  # noqa: F401  (re-exported: callers have imported it from here)
from search.tree import Tree

# The tree methods (their strategies: `search.methods.METHOD_STRATEGIES`, the same names).
METHODS = ("maxent_ts", "dts", "dts_star", "mcts_uct", "ancestral", "best_of_n", "greedy", "flow")
HEAD_METHODS = ("flow", "twisted_smc")  # methods that need a value head whatever `hybrid` says
SAMPLINGS = ("auto", "resample", "tree", "search")  # SearchConfig.sampling

# The head the recommended recipe (these defaults with `hybrid: visits`) was measured with: β(k/H)·V⁺ᵈ, trained at
# λ = 15 on other windows (checkpoints/heads/README.md); a path from the repository root.
RECOMMENDED_HEAD = "checkpoints/heads/soft_ahead_lam15"



@dataclass(frozen=True)
class SearchConfig:
    method: str = "maxent_ts"  # one of METHODS or SMC_METHODS
    lam: float = 15.0  # inverse temperature λ > 0 of the target p(x) exp(λ r(x)); 15 leaves a proposal room
    # (at λ = 5 even a perfect one gains ≈ 2× over p; BENCHMARKS.md, tilt room) and is what the shipped heads know
    n_rollouts: int = 200  # rollout budget (iterations x batch)
    batch_size: int = 16  # leaves selected, expanded and rolled out per iteration
    n_samples: int = 32  # samples drawn from the finished tree
    top_k: int | None = None  # truncate the prior to its k most likely allowed actions (target changes too)
    expansion: str = "full"  # maxent_ts / mcts_uct: "full" (every allowed action) or "widening" (see below)
    widening_c: float = 1.0  # widening: a node may use its ceil(C (N(s)+1)^α) most likely actions (maxent_ts,
    # mcts_uct), or draws a new child while its draws < C (N(s)+1)^α (dts, dts_star)
    widening_alpha: float = 0.5
    uct_c: float = 1.0  # exploration constant of UCT (dts_star) and PUCT (mcts_uct), in reward units
    hybrid: str = "off"  # maxent_ts with a flow head: "visits" (α = n0 / (n0 + N)) or "fixed" (α = hybrid_alpha)
    hybrid_n0: float = 1.0  # visits at which Monte-Carlo and Q_φ weigh equally (1: trust MC after one visit)
    hybrid_alpha: float = 0.5  # the fixed mixing weight
    hybrid_offset: bool = True  # visits (ignored otherwise): correct Q_φ(s, ·) by the MC-minus-head gap on s's
    # visited children, so a head off by a constant on an unseen prompt costs nothing
    guided_rollouts: bool = True  # hybrid: roll out from P_F (below) rather than p (the values stay consistent)
    guide_scale: float = 1.0  # guided rollouts and method flow draw from P_F ∝ p exp(guide_scale · λ Q_φ): below 1
    # a tempered P_F, wider than the head's own (benchmarks/proposal_quality.py measures which covers π* best)
    sampling: str = "auto"  # maxent_ts: "resample" resamples the search's draws by their importance weights
    # p e^{λr} / q (`TreeSearch.resample_draws`; no model calls); "tree" descends the finished tree's visited
    # children ∝ p e^{λV̂} (DTS Alg. 2); "search" makes each sample one more selection + rollout (it leaves the
    # tree early: mostly prior draws; costs n_samples rollouts, counted). "auto": resample for maxent_ts, every
    # other method its own final sampler (`search.methods`)
    defensive: float = 0.5  # maxent_ts (other methods ignore it): ε, the share of descents that draw from the
    # rollout policy (p, or P_F when guided) instead of the tree's values; every draw is weighted by the mixture
    # ε q_roll + (1 − ε) q_tree, so no weight exceeds 1/ε times an i.i.d. rollout-policy draw's (`DescentLaw`)
    selection_scale: float = 1.0  # maxent_ts: Boltzmann selection at λ_sel = selection_scale · λ (below 1: tempered,
    # a wider selection law); the backups and the target stay at λ
    ess_threshold: float = 0.5  # smc / twisted_smc: resample when ESS < ess_threshold · particles (n_rollouts)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "search")
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
        if self.hybrid_n0 < 0 or not 0 <= self.hybrid_alpha <= 1:
            raise ValueError(
                f"search needs hybrid_n0 >= 0 and hybrid_alpha in [0, 1], got {self.hybrid_n0}, {self.hybrid_alpha}"
            )
        if not self.guide_scale > 0:
            raise ValueError(f"search `guide_scale` must be > 0 (guided_rollouts: false rolls out from p), "
                             f"got {self.guide_scale}")
        if self.uct_c < 0:
            raise ValueError(f"search `uct_c` must be >= 0, got {self.uct_c}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"search `sampling` must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.sampling not in ("auto", "tree") and self.method != "maxent_ts":
            raise ValueError(f"search `sampling: {self.sampling}` needs method maxent_ts, got {self.method!r}")
        if not 0 <= self.defensive < 1:
            raise ValueError(f"search `defensive` must be in [0, 1) (a share of descents), got {self.defensive}")
        if not self.selection_scale > 0:
            raise ValueError(f"search `selection_scale` must be > 0, got {self.selection_scale}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"search `ess_threshold` must be in [0, 1], got {self.ess_threshold}")

    @property
    def guide_lam(self) -> float:
        """The inverse temperature of P_F ∝ p exp(guide_lam · Q_φ): guide_scale · λ."""
        return self.guide_scale * self.lam

    @property
    def final_sampling(self) -> str:
        """The final sampler `sampling` names: "auto" is "resample" for maxent_ts, "tree" (the method's own) else."""
        if self.sampling != "auto":
            return self.sampling
        return "resample" if self.method == "maxent_ts" else "tree"

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
        return log_mean_exp(w) / self.lam if w.size else float("nan")

    @property
    def draws_ess(self) -> float:
        """Effective sample size (Σ w)² / Σ w² of the draws' importance weights."""
        return effective_sample_size(self.draw_log_weights)
