"""Forecast metrics exactly as LLMTime computes them (Gruver et al. 2023, their `metrics.py`)."""

from __future__ import annotations

import numpy as np


def quantile_loss(truth: np.ndarray, samples: np.ndarray, q: float) -> float:
    """`QL_q = 2 Σ_t |(q̂_q,t - y_t)(1{y_t <= q̂_q,t} - q)|`, q̂ the sample q-quantile per step."""
    q_pred = np.quantile(samples, q, axis=0)  # (H,)
    return float(2.0 * np.sum(np.abs((q_pred - truth) * ((truth <= q_pred).astype(np.float64) - q))))


def crps(truth: np.ndarray, samples: np.ndarray, n_quantiles: int = 20) -> float:
    """LLMTime's quantile CRPS: `Σ_{q=1/K..1} QL_q / (K Σ_t |y_t|)`.

    Args:
        truth: (H,) held-out values.
        samples: (N, H) sampled forecasts.
    """
    truth, samples = _check(truth, samples)
    quantiles = np.arange(1, n_quantiles + 1) / n_quantiles
    total = sum(quantile_loss(truth, samples, q) for q in quantiles)
    return total / (n_quantiles * float(np.sum(np.abs(truth))))


def scaled_mae(truth: np.ndarray, samples: np.ndarray) -> float:
    """`mean_t |y_t - median_t| / mean_t |y_t|` with the per-step median of the samples."""
    truth, samples = _check(truth, samples)
    median = np.median(samples, axis=0)
    return float(np.mean(np.abs(truth - median)) / np.mean(np.abs(truth)))


def _check(truth: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, dtype=np.float64)
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    if samples.shape[-1] != truth.shape[-1]:
        raise ValueError(f"samples have {samples.shape[-1]} steps but the truth has {truth.shape[-1]}")
    if not np.all(np.isfinite(samples)):
        bad = int(np.argwhere(~np.isfinite(samples))[0, 0])
        raise ValueError(f"sample {bad} has non-finite values; drop invalid forecasts before scoring")
    if not np.any(truth):
        raise ValueError("the truth is all zeros, so scaled metrics are undefined")
    return truth, samples
