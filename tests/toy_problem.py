"""The enumerable toy and its exact answers, for the tests (they live in `benchmarks.evaluation.exact`, where the
toy benchmarks read them too)."""

from benchmarks.evaluation.exact import (  # noqa: F401
    ACTION_IDS,
    N_ACTIONS,
    PROMPT,
    ExactHead,
    Toy,
    mixture_distribution,
    policy_step_log_probs,
    resample_distribution,
    search_sampler_distribution,
    total_variation,
    tree_distribution,
)
from benchmarks.evaluation.toy import ToyTask  # noqa: F401, E402
