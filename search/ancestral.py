"""Ancestral sampling: forecasts drawn from the grammar-restricted prior, the baseline every method beats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.codec import Codec
from sadt.lm.backend import LMBackend
from sadt.rollout import rollout
from search.forecast_task import ForecastTask
from search.task import Task


@dataclass
class PolicyDraws:
    actions: list[list[int]]  # N action sequences
    log_prior: np.ndarray  # (N,) log p(x) under the restricted prior
    log_proposal: np.ndarray  # (N,) log q(x) under the policy that drew x (= log_prior for p itself)
    step_log_prior: list[np.ndarray]  # N arrays of log p(a_t|s_t), one per action (what a buffer stores)


def sample_policy(
    lm: LMBackend,
    task: Task,
    *,
    n_samples: int,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_k: int | None = None,
    value_head=None,
    guide_lam: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> PolicyDraws:
    """N action sequences drawn token by token from p(x|c), or with a value head and `guide_lam` > 0
    from P_F(a|s) ∝ p(a|s) exp(guide_lam · Q_φ(s, a)) (`sadt.rollout.rollout`); the prompt is prefilled once.
    Any task (a forecast's digits, a text task's vocabulary; with `top_k`, p cut to its top k a step)."""
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"need n_samples >= 1 and batch_size >= 1, got {n_samples} and {batch_size}")
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    prompt = lm.prefill(task.prompt_ids)
    actions, log_prior, log_proposal, step_log_prior = [], [], [], []
    with tqdm(total=n_samples, desc="sampling", unit="forecast", disable=not progress) as bar:
        while len(actions) < n_samples:
            b = min(batch_size, n_samples - len(actions))
            out = rollout(
                lm, prompt, task.action_token_ids, task.grammar, [[]] * b,
                temperature=temperature, top_k=top_k, generator=generator, value_head=value_head, guide_lam=guide_lam,
            )
            actions += out.full_sequences([[]] * b)
            log_prior.append(out.log_prior.sum(dim=1).cpu().numpy())
            log_proposal.append(out.log_proposal.sum(dim=1).cpu().numpy())
            steps = out.log_prior.cpu().numpy()
            step_log_prior += [steps[i, :n] for i, n in enumerate(out.lengths.tolist())]
            bar.update(b)
    return PolicyDraws(actions, np.concatenate(log_prior), np.concatenate(log_proposal), step_log_prior)


def sample_prior(lm: LMBackend, task: ForecastTask, *, n_samples: int, **kwargs) -> tuple[list[list[int]], np.ndarray]:
    """N action sequences from p(x|c) and their log p(x), (N,) (`sample_policy` without a head)."""
    draws = sample_policy(lm, task, n_samples=n_samples, **kwargs)
    return draws.actions, draws.log_prior


@dataclass
class ForecastSamples:
    actions: list[list[int]]  # N action sequences
    log_prior: np.ndarray  # (N,) log p(x) under the restricted prior
    values: np.ndarray  # (N_valid, H) forecasts in the series' own units
    rewards: np.ndarray  # (N,) r(x)


def sample_forecasts(
    lm: LMBackend, codec: Codec, context: np.ndarray, horizon: int, *, n_samples: int, seed: int = 0, **kwargs
) -> ForecastSamples:
    """N forecasts of `horizon` steps after `context` (series units) by ancestral sampling."""
    task = ForecastTask.build(codec, context, horizon)
    actions, log_prior = sample_prior(lm, task, n_samples=n_samples, seed=seed, **kwargs)
    return ForecastSamples(actions, log_prior, task.values(actions), task.reward_fn(actions))
