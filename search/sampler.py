"""One entry point for every sampler a `SearchConfig` names: the tree methods and the SMC ones."""

from __future__ import annotations

import os

import torch

from sadt.head_io import warn_if_other_lam
from sadt.lm.backend import LMBackend
from search.config import SearchConfig
from search.smc import SMC, SMC_METHODS
from search.task import Task
from search.tree_search import TreeSearch


def make_sampler(lm: LMBackend, task: Task, config: SearchConfig, value_head=None) -> TreeSearch | SMC:
    """`TreeSearch` for the tree methods, `SMC` for smc / twisted_smc, on `task` with `value_head` bound to it
    (`task.value`); call `.run()` on either.

    `value_head` is anything `task.value` binds: a loaded `SearchHead` (whose card says the λ it was trained at:
    a search at another λ gets a warning, since Q_φ estimates soft values at its own λ), a bare head, a
    parameter-free value's name, or a `sadt.value.Value`."""
    value = task.value(value_head, config.lam)
    warn_if_other_lam(None if value is None else value.trained_lam, config.lam)
    check_resources(lm, len(task.prompt_ids), task.grammar, len(task.action_token_ids), config)
    sampler = SMC if config.method in SMC_METHODS else TreeSearch
    return sampler(lm, task, config, value_head=value)



MEMORY_SHARE = 0.8  # of the device's memory, the most a search's KV caches may plan to take


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: the GPU's, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_resources(lm: LMBackend, prompt_tokens: int, grammar, n_actions: int, config: SearchConfig) -> None:
    """Refuse, before the first forward, a search that cannot run: a prompt plus the longest answer past the LM's
    window, a `top_k` above the actions there are (a text node would go dense), or KV caches beyond memory
    (SMC keeps `n_rollouts` particles' caches at once, a tree `batch_size` rollouts').

    Raises:
        ValueError: naming the setting, what it needs and the most that fits.
    """
    window = getattr(lm, "context_window", None)
    longest = prompt_tokens + grammar.max_tokens
    if window is not None and longest > window:
        raise ValueError(f"a prompt of {prompt_tokens} tokens plus an answer of up to {grammar.max_tokens} exceeds the "
                         f"model's window of {window} tokens: shorten the prompt to at most "
                         f"{window - grammar.max_tokens} tokens")
    if config.top_k is not None and config.top_k > n_actions:
        raise ValueError(f"search `top_k` = {config.top_k} exceeds the task's {n_actions} actions: use at most "
                         f"{n_actions}, or null for all of them")
    per_row = getattr(lm, "kv_bytes_per_position", None)
    if per_row is None:
        return
    per_row *= longest
    smc = config.method in SMC_METHODS
    rows, setting = (config.n_rollouts, "n_rollouts (SMC particles)") if smc else (config.batch_size, "batch_size")
    budget = MEMORY_SHARE * device_memory(lm.device)
    if rows * per_row > budget:
        raise ValueError(f"search `{setting}` = {rows} needs about {rows * per_row / 2**30:.1f} GiB of KV cache "
                         f"({rows} × {longest} positions × {per_row // longest / 2**10:.0f} KiB), over "
                         f"{MEMORY_SHARE:.0%} of this device's {device_memory(lm.device) / 2**30:.0f} GiB: use at "
                         f"most {int(budget // per_row)}")
