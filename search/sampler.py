"""One entry point for every sampler a `SearchConfig` names: the tree methods and the SMC ones."""

from __future__ import annotations

from collections.abc import Sequence

from sadt.head_io import warn_if_other_lam
from sadt.lm.backend import LMBackend
from search.config import RewardFn, SearchConfig
from search.smc import SMC, SMC_METHODS
from search.tree_search import TreeSearch


def make_sampler(
    lm: LMBackend,
    prompt_ids: Sequence[int],
    action_token_ids: Sequence[int],
    grammar,
    reward_fn: RewardFn,
    config: SearchConfig,
    value_head=None,
) -> TreeSearch | SMC:
    """`TreeSearch` for the tree methods, `SMC` for smc / twisted_smc; call `.run()` on either.

    A head loaded from a checkpoint knows the λ it was trained at (`trained_lam`); a search at another
    λ gets a warning, since Q_φ estimates soft values at its own λ."""
    warn_if_other_lam(getattr(value_head, "trained_lam", None), config.lam)
    sampler = SMC if config.method in SMC_METHODS else TreeSearch
    return sampler(lm, prompt_ids, action_token_ids, grammar, reward_fn, config, value_head=value_head)

