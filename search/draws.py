"""What a tree search's importance weights read: the law each descent drew its in-tree choices from, and each
draw's record (`search.tree_search`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class Draw:
    """One rollout of the search, as the importance-sampling estimates read it."""

    terminal: int  # the terminal node it reached
    log_weight: float  # log p(x) + λ r(x) − log q(x), q the law of its descent and rollout when it was drawn
