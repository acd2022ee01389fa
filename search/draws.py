"""What a tree search's importance weights read: the law each descent drew its in-tree choices from, each
draw's record, the adaptive defensive share, and the history of the tree's laws that the balance heuristic
rebuilds them from (`search.tree_search`, `search.balance`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sadt.importance import effective_sample_size


@dataclass
class DescentLaw:
    """One descent's in-tree choices, their log-probabilities summed under each law that could have made them.

    A defensive descent (probability ε) draws from the rollout policy q_roll, any other from the tree's
    Boltzmann law q_tree; below the new leaf both roll out alike. So the descent's share of the draw's
    log-weight is log p − log(ε q_roll + (1 − ε) q_tree), the mixture density of the choices actually made,
    which keeps Ẑ unbiased and bounds the weight by 1/ε times an i.i.d. rollout-policy draw's.
    """

    defensive: bool = False  # this descent draws from q_roll
    log_prior: float = 0.0  # Σ log p(a|s)
    log_tree: float = 0.0  # Σ log q_tree(a|s)
    log_roll: float = 0.0  # Σ log q_roll(a|s) (kept only when ε > 0)

    def log_ratio(self, epsilon: float) -> float:
        """log p − log q_mix of the choices so far (log p − log q_tree when ε = 0)."""
        if epsilon == 0:
            return self.log_prior - self.log_tree
        return self.log_prior - float(np.logaddexp(np.log(epsilon) + self.log_roll,
                                                   np.log1p(-epsilon) + self.log_tree))

    def responsibility(self, epsilon: float) -> float:
        """ρ = ε q_roll / (ε q_roll + (1 − ε) q_tree) of the choices so far: the probability that the defensive
        component made them, given the choices (0 when ε = 0)."""
        if epsilon == 0:
            return 0.0
        log_roll = np.log(epsilon) + self.log_roll
        return float(np.exp(log_roll - np.logaddexp(log_roll, np.log1p(-epsilon) + self.log_tree)))


@dataclass(frozen=True)
class Draw:
    """One rollout of the search, as the importance-sampling estimates read it."""

    terminal: int  # the terminal node it reached
    log_weight: float  # log p(x) + λ r(x) − log q(x), q the law of its descent and rollout when it was drawn
    responsibility: float = 0.0  # ρ, the chance that its descent was a defensive one (`DescentLaw.responsibility`)
    share: float = 0.0  # ε when it was drawn


ADAPTIVE_SHARE_BOUNDS = (0.1, 0.95)  # an adapted ε stays here: each weight ≤ 10× an i.i.d. rollout-policy
# draw's, and the tree keeps 5% of the descents to show that its law has become worth more


class DrawArrays:
    """The draws so far as float64 arrays (log-weights and responsibilities ρ), grown a batch at a time: a
    share rule reads all of them every iteration, and rebuilding them from the `Draw` records each time made a
    batch-1 search quadratic in its draws."""

    def __init__(self) -> None:
        self.log_weights = self.responsibilities = np.empty(0)

    def extend(self, draws: Sequence[Draw]) -> None:
        self.log_weights = np.append(self.log_weights, [d.log_weight for d in draws])
        self.responsibilities = np.append(self.responsibilities, [d.responsibility for d in draws])


class EMShare:
    """Population Monte Carlo's ε: after each iteration, (ESS ε̂ + m ε₀) / (ESS + m), ε̂ = Σ_i w̄_i ρ_i, clipped to
    `bounds`.

    ε̂ is the Rao-Blackwellised mixture-weight update of population Monte Carlo (Douc, Guillin, Marin and Robert,
    Ann. Statist. 2007; Cappé et al., Stat. Comput. 2008): w̄_i are the self-normalised importance weights and
    ρ_i each draw's responsibility of the rollout-policy component, so ε̂ is the share of π*'s mass (as the
    draws see it) that the defensive descents found, the EM step on KL(π* ‖ ε q_roll + (1 − ε) q_tree). With
    few effective draws one lucky draw decides ε̂, so it is shrunk towards the start ε₀ as if ε₀ had m
    (`prior_draws`) effective draws behind it. ε only moves between iterations and reads only earlier draws,
    so each draw's weight stays exact for the law it was drawn from and Ẑ stays unbiased.
    """

    def __init__(self, bounds: tuple[float, float] = ADAPTIVE_SHARE_BOUNDS) -> None:
        self.bounds = bounds
        self.seen = DrawArrays()

    def update(self, new_draws: Sequence[Draw], start: float, prior_draws: float) -> float:
        """The next iteration's ε from every draw so far, `new_draws` (this iteration's) the last of them."""
        self.seen.extend(new_draws)
        log_weights = self.seen.log_weights
        normalised = np.exp(log_weights - np.logaddexp.reduce(log_weights))
        estimate = float(normalised @ self.seen.responsibilities)
        return shrunk_share(estimate, effective_sample_size(log_weights), start, prior_draws, self.bounds)


def shrunk_share(estimate: float, ess: float, start: float, prior_draws: float,
                 bounds: tuple[float, float]) -> float:
    """(ESS ε̂ + m ε₀) / (ESS + m), clipped to `bounds`: ε̂ trusted as far as the draws' ESS backs it."""
    return float(np.clip((ess * estimate + prior_draws * start) / (ess + prior_draws), *bounds))


SHARE_GRID = 341  # candidate ε for the variance rule, 0.0025 apart within the bounds: finer than the draws resolve
MOMENT_TIE = 1e-9  # log M differences below this are rounding (≈ 1e-15 here), not evidence


class MinVarianceShare:
    """The next iteration's ε as the share whose mixture would have given the draws so far the smallest second
    moment of their weights, shrunk towards ε₀ as `EMShare` does.

    A draw x_i made under share ε_i would weigh w_i q_{ε_i}(x_i) / q_α(x_i) under share α, so
    E_{q_α}[w_α²] is estimated by M(α) = Σ_i w_i² q_{ε_i}(x_i) / q_α(x_i), and since the rollout below a new leaf
    is the same under both components, q_α / q_{ε_i} = α ρ_i / ε_i + (1 − α)(1 − ρ_i) / (1 − ε_i) (ρ_i the draw's
    responsibility). M is convex in α (He and Owen, "Optimal mixture weights in multiple importance sampling",
    2014), so its minimum over a fine grid is the variance-optimal share the draws can see; unlike the EM step it
    jumps there in one iteration instead of moving a fraction of the way. Like it, ε reads only earlier draws,
    so every weight stays exact. log M on the grid is a running sum, O(grid) a draw.
    """

    def __init__(self, bounds: tuple[float, float] = ADAPTIVE_SHARE_BOUNDS) -> None:
        self.bounds = bounds
        self.alphas = np.linspace(*bounds, SHARE_GRID)
        self.log_moment = np.full(SHARE_GRID, -np.inf)
        self.seen = DrawArrays()

    def update(self, new_draws: Sequence[Draw], start: float, prior_draws: float) -> float:
        """The next iteration's ε from every draw so far, `new_draws` (this iteration's) the last of them."""
        if not all(0 < draw.share < 1 for draw in new_draws):  # checked first: no sum left half-grown
            raise ValueError("the variance rule needs each draw's defensive share in (0, 1) (`Draw.share`)")
        for draw in new_draws:  # in order, so the sum is the one a single pass over all the draws would give
            rho, share = draw.responsibility, draw.share
            ratio = self.alphas * (rho / share) + (1 - self.alphas) * ((1 - rho) / (1 - share))  # q_α / q_{ε_i}
            self.log_moment = np.logaddexp(self.log_moment, 2 * draw.log_weight - np.log(ratio))
        self.seen.extend(new_draws)
        return shrunk_share(self.least_moment_share(start), effective_sample_size(self.seen.log_weights), start,
                            prior_draws, self.bounds)

    def least_moment_share(self, start: float) -> float:
        """The grid's α of least M, the one nearest ε₀ among ties: M is flat when every draw has ρ_i = ε_i (as
        after the first iteration, when the tree's law is still the rollout policy's), and there the last bits
        of ρ, which differ between CPUs, would otherwise pick any share."""
        tied = self.alphas[self.log_moment <= self.log_moment.min() + MOMENT_TIE]
        return float(tied[np.argmin(np.abs(tied - start))])


def adapted_defensive_share(draws: Sequence[Draw], start: float, prior_draws: float,
                            bounds: tuple[float, float] = ADAPTIVE_SHARE_BOUNDS) -> float:
    """`EMShare`'s ε after `draws`, in one call."""
    return EMShare(bounds).update(draws, start, prior_draws)


def min_variance_defensive_share(draws: Sequence[Draw], start: float, prior_draws: float,
                                 bounds: tuple[float, float] = ADAPTIVE_SHARE_BOUNDS) -> float:
    """`MinVarianceShare`'s ε after `draws`, in one call."""
    return MinVarianceShare(bounds).update(draws, start, prior_draws)


@dataclass(frozen=True)
class IterationLaw:
    """What q_j reads: the tree's size before iteration j, its defensive share, its draws, and the V̂ its backup
    then set (nodes and values), which the later iterations' laws read."""

    size: int
    epsilon: float
    batch: int
    nodes: np.ndarray
    values: np.ndarray


@dataclass
class LawHistory:
    """Every finished iteration's `IterationLaw`, in order (`TreeSearch` appends one after each backup)."""

    iterations: list[IterationLaw] = field(default_factory=list)

    def record(self, size: int, epsilon: float, batch: int, nodes: np.ndarray, values: np.ndarray) -> None:
        """Keeps the arrays as given: pass fresh ones (the search's are `np.unique`'s and a fancy-indexed copy)."""
        self.iterations.append(IterationLaw(size, epsilon, batch, nodes, values))


DEFENSIVE_RULES = {"em": EMShare, "min_variance": MinVarianceShare}  # by `SearchConfig.defensive_rule`: each search
# makes its own, which keeps its running sums
