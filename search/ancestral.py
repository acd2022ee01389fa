"""Ancestral sampling: draw forecasts from the grammar-restricted prior, the baseline every method beats.

Also the shared "draw N forecasts for one series" path: encode the context, prefill the prompt
once, roll out in batches, decode back to the series' units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.codec import Codec, Scaler
from sadt.grammar import DigitGrammar
from sadt.lm.backend import TorchLM
from sadt.rollout import rollout


@dataclass
class ForecastSamples:
    actions: list[list[int]]  # N action sequences
    log_prior: np.ndarray  # (N,) log p(x) under the restricted prior
    scaled: np.ndarray  # (N, H) values in the codec's scaled units (NaN where invalid)
    valid: np.ndarray  # (N,) parsed to H values
    scaler: Scaler

    @property
    def values(self) -> np.ndarray:
        """(N_valid, H) valid forecasts in the series' own units."""
        return self.scaler.inverse(self.scaled[self.valid])


def sample_forecasts(
    lm: TorchLM,
    codec: Codec,
    context: np.ndarray,
    horizon: int,
    *,
    n_samples: int,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ForecastSamples:
    """N forecasts of `horizon` steps after `context`, by ancestral sampling of the prior."""
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"need n_samples >= 1 and batch_size >= 1, got {n_samples} and {batch_size}")
    prompt_ids, scaler = codec.encode_prompt(context)
    grammar = DigitGrammar(horizon=horizon, max_digits=codec.config.max_digits)
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    prompt = lm.prefill(prompt_ids)
    actions, log_prior = [], []
    with tqdm(total=n_samples, desc="sampling", unit="forecast", disable=not progress) as bar:
        while len(actions) < n_samples:
            b = min(batch_size, n_samples - len(actions))
            out = rollout(
                lm, prompt, codec.action_token_ids, grammar, [[]] * b,
                temperature=temperature, top_k=top_k, generator=generator,
            )
            actions += out.full_sequences([[]] * b)
            log_prior.append(out.log_prior.sum(dim=1).cpu().numpy())
            bar.update(b)
    scaled, valid = codec.decode_actions(_pad(actions), horizon)
    return ForecastSamples(actions, np.concatenate(log_prior), scaled, valid, scaler)


def _pad(sequences: list[list[int]]) -> np.ndarray:
    out = np.full((len(sequences), max(len(s) for s in sequences)), -1, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out
