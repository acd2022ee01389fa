"""What a search is asked to do and what it returns, for every method.

A search's config is one of a tagged union: `SearchConfig` holds what every method reads (the tag `method`, λ,
the budget, the seed) and each family of methods has its own subclass with only the settings it reads
(`MaxEntTSConfig`, `DTSConfig`, `MCTSConfig`, `FlowConfig`, `PolicyDrawConfig`, `SMCConfig`). Build one with
`search_config(method, **settings)`; YAML blocks dispatch on their `method` the same way (`sadt.config.from_dict`),
and `config.for_method(other)` carries the settings two methods share (a run's one `search:` block feeds
several rows). The shared search code asks every config the same five questions (`needs_head`, `final_sampling`,
`guides_rollouts`, `defensive_share`, `head_mix`) and never reads another method's field.

The methods themselves are `search.methods` (tree methods) and `search.smc` (particle methods).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sadt.config import ConfigError, check_finite, to_dict
from sadt.importance import effective_sample_size, log_mean_exp
from search.draws import ADAPTIVE_SHARE_BOUNDS, DEFENSIVE_RULES
from search.smc import SMC_METHODS  # particle samplers, configured by `SMCConfig`
from search.task import RewardFn  # noqa: F401  (re-exported: callers have imported it from here)
from search.tree import Tree
from search.values import HeadMix

# The tree methods (their strategies: `search.methods.METHOD_STRATEGIES`, the same names).
METHODS = ("maxent_ts", "dts", "dts_star", "mcts_uct", "ancestral", "best_of_n", "greedy", "flow")
SAMPLINGS = ("auto", "resample", "tree", "search")  # MaxEntTSConfig.sampling
# MC-only MaxEnt-TS's selection pseudo-visits: against n0 = 0, 1.05x the draws' ESS per token at λ = 5 and level at
# λ = 15 (13 held-out windows, 4 runs each; BENCHMARKS.md, issue 34)
SELECTION_SHRINK = 4.0
# MC-only MaxEnt-TS's rule for its adaptive defensive share ε: against the EM step, 1.13x the draws' ESS per token
# at λ = 15 and 10k tokens, level at λ = 5 (13 held-out windows, 4 runs each; BENCHMARKS.md, issue 34). The hybrid
# keeps "em", unmeasured under this rule
DEFENSIVE_RULE = "min_variance"

# The head the recommended recipe (these defaults with `hybrid: visits`) was measured with: β(k/H)·V⁺ᵈ, trained at
# λ = 15 on other windows (checkpoints/heads/README.md); a path from the repository root.
RECOMMENDED_HEAD = "checkpoints/heads/soft_ahead_lam15"


@dataclass(frozen=True)
class SearchConfig:
    """The settings every method reads; a search gets one of the subclasses (`search_config`)."""

    methods: ClassVar[tuple[str, ...]] = ()  # the tags this class configures
    not_carried: ClassVar[frozenset[str]] = frozenset()  # settings it never takes from another method's block

    method: str = "maxent_ts"  # one of METHODS or SMC_METHODS
    lam: float = 15.0  # inverse temperature λ > 0 of the target p(x) exp(λ r(x)); 15 leaves a proposal room
    # (at λ = 5 even a perfect one gains ≈ 2× over p; BENCHMARKS.md, tilt room) and is what the shipped heads know
    n_rollouts: int = 200  # rollout budget (iterations x batch); particles for smc / twisted_smc
    batch_size: int = 16  # leaves selected, expanded and rolled out per iteration
    n_samples: int = 32  # samples drawn from the finished tree
    top_k: int | None = None  # truncate the prior to its k most likely allowed actions (target changes too)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "search")
        if self.method not in self.methods:
            raise ValueError(f"search `method` {self.method!r} is not one of {type(self).__name__}'s "
                             f"{self.methods}: build configs with search_config(method, ...)")
        if not self.lam > 0:
            raise ValueError(f"search `lam` must be > 0 (inverse temperature), got {self.lam}")
        for name in ("n_rollouts", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"search `{name}` must be >= 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"search `top_k` must be >= 1 or null, got {self.top_k}")

    # -- what the shared search code asks of every method -----------------------------------

    @property
    def needs_head(self) -> bool:
        """Whether this configuration reads a flow head's Q_φ."""
        return False

    @property
    def final_sampling(self) -> str:
        """The final sampler: "tree" (the method's own, `search.methods`), "resample" or "search"."""
        return "tree"

    @property
    def guides_rollouts(self) -> bool:
        """Whether rollouts (and draws from the rollout policy) follow P_F rather than p when a head is bound."""
        return False

    @property
    def defensive_share(self) -> float:
        """ε, the share of descents that draw from the rollout policy instead of the tree's values."""
        return 0.0

    @property
    def adapts_defensive(self) -> bool:
        """Whether ε moves between iterations with the draws (`search.draws.adapted_defensive_share`)."""
        return False

    @property
    def head_mix(self) -> HeadMix | None:
        """How the tree's values mix Monte Carlo with Q_φ (`search.values`); None: Monte Carlo only."""
        return None

    @classmethod
    def resolve_class(cls, raw: dict, source: str, prefix: str) -> type[SearchConfig]:
        """The class a YAML block names by its `method` (maxent_ts when absent): `sadt.config.from_dict` builds a
        field typed `SearchConfig` as the method's own class."""
        if cls is not SearchConfig:
            return cls
        method = raw.get("method", "maxent_ts")
        if not isinstance(method, str) or method not in CONFIG_OF:
            raise ConfigError(f"{source + ': ' if source else ''}`{prefix}method` must be one of "
                              f"{METHODS + SMC_METHODS}, got {method!r}")
        return CONFIG_OF[method]

    @classmethod
    def unknown_key(cls, key: str, raw: dict) -> str:
        """Why this block's method refuses `key`, for `sadt.config.from_dict`'s message."""
        return why_not(key, raw.get("method", cls.methods[0]))

    def for_method(self, method: str, **overrides) -> SearchConfig:
        """This config carried to `method`: the settings `method`'s class has too (the common ones, widening
        between maxent_ts and mcts_uct, ...), then `overrides`; the rest stay behind."""
        return search_config(method, **{**carried(self, method), **overrides})


@dataclass(frozen=True)
class DefensiveSettings(SearchConfig):
    """The defensive mixture of the methods whose descents have a law (MaxEnt-TS, DTS): a share ε of descents
    draws from the rollout policy, and each draw is weighted by the mixture of both laws (`search.draws`)."""

    defensive: float = 0.0  # ε, the share of descents that draw from the rollout policy (p, or P_F when guided)
    defensive_adapt: bool = False  # ε starts at `defensive` and moves each iteration to the share of the draws'
    # weight that the defensive descents carry (population Monte Carlo's update, `search.draws.
    # adapted_defensive_share`), within [0.1, 0.95]. No effect with defensive: 0
    defensive_adapt_prior: float = 4.0  # m: the start ε counts as m effective draws, so a few lucky draws do not
    # swing it
    defensive_rule: str | None = "em"  # how ε adapts: "em", population Monte Carlo's step towards the defensive draws'
    # share of the weight (`search.draws.adapted_defensive_share`); "min_variance", straight to the share whose
    # mixture would have given the draws so far the smallest second moment (`min_variance_defensive_share`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.defensive < 1:
            raise ValueError(f"search `defensive` must be in [0, 1) (a share of descents), got {self.defensive}")
        low, high = ADAPTIVE_SHARE_BOUNDS
        if self.adapts_defensive and not low <= self.defensive <= high:
            raise ValueError(f"search `defensive_adapt` moves ε within [{low}, {high}]: start it there "
                             f"(`defensive`), got {self.defensive}")
        if not self.defensive_adapt_prior >= 0:
            raise ValueError(f"search `defensive_adapt_prior` must be >= 0 (effective draws), "
                             f"got {self.defensive_adapt_prior}")
        if self.share_rule not in DEFENSIVE_RULES:
            raise ValueError(f"search `defensive_rule` must be one of {sorted(DEFENSIVE_RULES)}, "
                             f"got {self.defensive_rule!r}")

    @property
    def defensive_share(self) -> float:
        return self.defensive

    @property
    def share_rule(self) -> str | None:
        """The `search.draws.DEFENSIVE_RULES` key that moves ε: `defensive_rule` (a subclass may resolve None)."""
        return self.defensive_rule

    @property
    def adapts_defensive(self) -> bool:
        return self.defensive_adapt and self.defensive > 0


@dataclass(frozen=True)
class WideningSettings(SearchConfig):
    widening_c: float = 1.0  # progressive widening's C in C (N(s)+1)^α (each subclass says what it limits)
    widening_alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.widening_c > 0 and 0 <= self.widening_alpha <= 1):
            raise ValueError(f"search widening needs `widening_c` > 0 and `widening_alpha` in [0, 1], "
                             f"got {self.widening_c} and {self.widening_alpha}")


@dataclass(frozen=True)
class ExpansionSettings(WideningSettings):
    expansion: str = "full"  # "full" (every allowed action) or "widening": a node may use its ceil(C (N(s)+1)^α)
    # most likely actions and those already visited

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.expansion not in ("full", "widening"):
            raise ValueError(f"search `expansion` must be 'full' or 'widening', got {self.expansion!r}")


@dataclass(frozen=True)
class GuideSettings(SearchConfig):
    guide_scale: float = 1.0  # draws from P_F ∝ p exp(guide_scale · λ Q_φ): below 1 a tempered P_F, wider than
    # the head's own (benchmarks/proposal_quality.py measures which covers π* best)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.guide_scale > 0:
            raise ValueError(f"search `guide_scale` must be > 0, got {self.guide_scale}")

    @property
    def guide_lam(self) -> float:
        """The inverse temperature of P_F ∝ p exp(guide_lam · Q_φ): guide_scale · λ."""
        return self.guide_scale * self.lam


@dataclass(frozen=True)
class UCTSettings(SearchConfig):
    uct_c: float = 1.0  # exploration constant of UCT (dts_star) and PUCT (mcts_uct), in reward units

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uct_c < 0:
            raise ValueError(f"search `uct_c` must be >= 0, got {self.uct_c}")


@dataclass(frozen=True)
class MaxEntTSConfig(ExpansionSettings, GuideSettings, DefensiveSettings):
    """MaxEnt-TS, alone or as the hybrid reading a flow head (`hybrid`)."""

    methods: ClassVar[tuple[str, ...]] = ("maxent_ts",)

    hybrid: str = "off"  # with a flow head: "visits" (α = n0 / (n0 + N)) or "fixed" (α = hybrid_alpha)
    hybrid_n0: float = 1.0  # visits at which Monte-Carlo and Q_φ weigh equally (1: trust MC after one visit)
    hybrid_alpha: float = 0.5  # the fixed mixing weight
    hybrid_offset: bool = True  # visits (ignored otherwise): correct Q_φ(s, ·) by the MC-minus-head gap on s's
    # visited children, so a head off by a constant on an unseen prompt costs nothing
    guided_rollouts: bool = True  # hybrid: roll out from P_F (guide_scale) rather than p (the values stay consistent)
    sampling: str = "auto"  # "resample" resamples the search's draws by their importance weights p e^{λr} / q
    # (`TreeSearch.resample_draws`; no model calls); "tree" descends the finished tree's visited children
    # ∝ p e^{λV̂} (DTS Alg. 2); "search" makes each sample one more selection + rollout (it leaves the tree early:
    # mostly prior draws; costs n_samples rollouts, counted). "auto": resample
    defensive: float = 0.5  # ε, the share of descents that draw from the rollout policy (p, or P_F when guided)
    # instead of the tree's values; every draw is weighted by the mixture ε q_roll + (1 − ε) q_tree, so no weight
    # exceeds 1/ε times an i.i.d. rollout-policy draw's (`DescentLaw`)
    selection_scale: float = 1.0  # Boltzmann selection at λ_sel = selection_scale · λ (below 1: tempered, a wider
    # selection law); the backups and the target stay at λ
    defensive_adapt: bool = True  # it beat the fixed ε = 0.5 on the 13 held-out windows (BENCHMARKS.md, issue 34)
    selection_shrink: float | None = None  # n0 pseudo-visits: selection reads (N V̂(s·a) + n0 V̂(s)) / (N + n0), a
    # child's estimate trusted as its visits grow (`search.selection.shrink_to_parent`); Monte Carlo only. None:
    # `SELECTION_SHRINK` without a hybrid, 0 with one (`selection_pseudo_visits`)
    defensive_rule: str | None = None  # None: `DEFENSIVE_RULE` without a hybrid, "em" with one (`share_rule`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hybrid not in ("off", "visits", "fixed"):
            raise ValueError(f"search `hybrid` must be 'off', 'visits' or 'fixed', got {self.hybrid!r}")
        if self.hybrid_n0 < 0 or not 0 <= self.hybrid_alpha <= 1:
            raise ValueError(
                f"search needs hybrid_n0 >= 0 and hybrid_alpha in [0, 1], got {self.hybrid_n0}, {self.hybrid_alpha}"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"search `sampling` must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not self.selection_scale > 0:
            raise ValueError(f"search `selection_scale` must be > 0, got {self.selection_scale}")
        shrink = self.selection_shrink
        if shrink is not None and (shrink < 0 or (shrink > 0 and self.hybrid != "off")):
            raise ValueError(f"search `selection_shrink` must be >= 0 and only without a hybrid (its Q_φ already "
                             f"stands in for few visits), got {self.selection_shrink} with hybrid {self.hybrid!r}")

    @property
    def needs_head(self) -> bool:
        return self.hybrid != "off"

    @property
    def selection_pseudo_visits(self) -> float:
        """n0 of the shrunk selection: `selection_shrink` where set, else `SELECTION_SHRINK` without a hybrid
        and 0 with one (its Q_φ already stands in for few visits)."""
        if self.selection_shrink is not None:
            return self.selection_shrink
        return SELECTION_SHRINK if self.hybrid == "off" else 0.0

    @property
    def share_rule(self) -> str | None:
        """How ε adapts: `defensive_rule` where set, else `DEFENSIVE_RULE` without a hybrid and "em" with one
        (the rule its rows were measured with)."""
        if self.defensive_rule is not None:
            return self.defensive_rule
        return DEFENSIVE_RULE if self.hybrid == "off" else "em"

    @property
    def final_sampling(self) -> str:
        return "resample" if self.sampling == "auto" else self.sampling

    @property
    def guides_rollouts(self) -> bool:
        return self.guided_rollouts

    @property
    def head_mix(self) -> HeadMix | None:
        if self.hybrid == "off":
            return None
        return HeadMix(self.hybrid, self.hybrid_n0, self.hybrid_alpha, self.hybrid_offset)


@dataclass(frozen=True)
class DTSConfig(WideningSettings, UCTSettings, DefensiveSettings):
    """Diffusion Tree Sampling: a node draws a new child from p while its draws are below C (N(s)+1)^α
    (`widening_*`); DTS* then picks by UCT (`uct_c`), DTS by Boltzmann on the draws.

    DTS's Boltzmann law covers only the children drawn so far, so its draws' weights p e^{λr} / q miss the rest
    of π*'s mass (Ẑ biased low); `defensive: ε > 0` mixes in descents that draw from p, as MaxEnt-TS's does,
    which restores full support and an unbiased Ẑ (issue 34). 0, the published algorithm, by default."""

    methods: ClassVar[tuple[str, ...]] = ("dts", "dts_star")
    # maxent_ts's ε (0.5 by default) must not turn a DTS row fed by a maxent_ts block into another sampler
    not_carried: ClassVar[frozenset[str]] = frozenset({"defensive", "defensive_adapt", "defensive_adapt_prior",
                                                       "defensive_rule"})
    method: str = "dts"
    # `defensive` 0 by default (dts only: DTS*'s UCT has no law to mix p into)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "dts_star" and self.defensive > 0:
            raise ValueError("search `defensive` needs a selection law to mix p into; dts_star picks by UCT: "
                             "use method 'dts' or defensive: 0")


@dataclass(frozen=True)
class MCTSConfig(ExpansionSettings, UCTSettings):
    """MCTS with PUCT (`uct_c`) and mean backups; `expansion: widening` limits the actions it may try."""

    methods: ClassVar[tuple[str, ...]] = ("mcts_uct",)
    method: str = "mcts_uct"


@dataclass(frozen=True)
class PolicyDrawConfig(SearchConfig):
    """Draws of p kept in a tree: ancestral sampling, best-of-N, greedy (p truncated to its top 1)."""

    methods: ClassVar[tuple[str, ...]] = ("ancestral", "best_of_n", "greedy")
    method: str = "ancestral"


@dataclass(frozen=True)
class FlowConfig(GuideSettings):
    """Draws of the learned proposal P_F ∝ p exp(guide_scale · λ Q_φ), kept in a tree."""

    methods: ClassVar[tuple[str, ...]] = ("flow",)
    method: str = "flow"

    @property
    def needs_head(self) -> bool:
        return True

    @property
    def guides_rollouts(self) -> bool:
        return True


@dataclass(frozen=True)
class SMCConfig(GuideSettings):
    """SMC (`smc`) and twisted SMC (`twisted_smc`, twisted by a flow head at guide_scale · λ); `n_rollouts`
    particles."""

    methods: ClassVar[tuple[str, ...]] = SMC_METHODS
    method: str = "smc"
    ess_threshold: float = 0.5  # resample when ESS < ess_threshold · particles

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"search `ess_threshold` must be in [0, 1], got {self.ess_threshold}")

    @property
    def needs_head(self) -> bool:
        return self.method == "twisted_smc"


CONFIG_CLASSES: tuple[type[SearchConfig], ...] = (MaxEntTSConfig, DTSConfig, MCTSConfig, PolicyDrawConfig,
                                                  FlowConfig, SMCConfig)
CONFIG_OF: dict[str, type[SearchConfig]] = {method: cls for cls in CONFIG_CLASSES for method in cls.methods}


def config_class(method: str) -> type[SearchConfig]:
    """The config class of `method`; a ValueError naming the methods for any other."""
    if method not in CONFIG_OF:
        raise ValueError(f"search `method` must be one of {METHODS + SMC_METHODS}, got {method!r}")
    return CONFIG_OF[method]


def search_config(method: str = "maxent_ts", **settings) -> SearchConfig:
    """The config of `method` with `settings`; a setting `method` does not read is an error that names it and
    the methods that do read it."""
    cls = config_class(method)
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"search `{unknown[0]}` {why_not(unknown[0], method)}; its settings are {allowed}")
    return cls(method=method, **settings)


def why_not(name: str, method: str) -> str:
    """Why `method` refuses the setting `name`: another method's setting, or no method's."""
    readers = [m for m in METHODS + SMC_METHODS if name in {f.name for f in dataclasses.fields(CONFIG_OF[m])}]
    if readers:
        return f"is a setting of {', '.join(readers)}, not of method {method!r}"
    return f"is not a setting of method {method!r} (nor of any other)"


def carried(config: SearchConfig, method: str) -> dict:
    """The settings of `config` that `method`'s class has too (without the tag and what it keeps its own)."""
    cls = config_class(method)
    names = {f.name for f in dataclasses.fields(cls)} - {"method"} - cls.not_carried
    return {name: value for name, value in to_dict(config).items() if name in names}


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
