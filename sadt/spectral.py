"""Power spectra of forecasts and contexts: the spectral reward term and the Spec-W1 metric.

PSDs are Welch estimates (scipy) with an explicit segment length shared by forecast and context,
so both live on the same frequency grid `f_k = k / nperseg`. The zero bin is dropped (the mean
is not a spectral property of the forecast), and PSDs are floored before the log: at a millionth of
the context's mean PSD, and never below an absolute 1e-12, so that a flat context (PSD 0) still
gives a finite reward that prefers flat forecasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import welch

from sadt.config import check_finite

MIN_HORIZON = 4  # Welch needs a few points per segment: the shortest forecast the penalty scores


@dataclass(frozen=True)
class SpectralConfig:
    segment: int = 24  # Welch segment length in steps, capped at the forecast length
    context_stride: int = 1  # stride between context windows when averaging the context PSD
    rel_floor: float = 1e-6  # PSD floor before the log, relative to the mean context PSD
    abs_floor: float = 1e-12  # and never below this (a flat context has a zero PSD: log 0 would make r = -inf)

    def __post_init__(self) -> None:
        check_finite(self, "spectral")
        if self.segment < 4:
            raise ValueError(f"spectral `segment` must be >= 4 steps, got {self.segment}")
        if self.context_stride < 1:
            raise ValueError(f"spectral `context_stride` must be >= 1, got {self.context_stride}")
        for name in ("rel_floor", "abs_floor"):
            value = getattr(self, name)
            if not (value > 0 and np.isfinite(value)):
                raise ValueError(f"spectral `{name}` must be finite and > 0, got {value}")


def psd(x: np.ndarray, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD along the last axis without the zero bin: (..., T) -> freqs (F,), psd (..., F)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < nperseg:
        raise ValueError(f"psd needs series of at least nperseg={nperseg} steps, got {x.shape[-1]}")
    freqs, power = welch(x, fs=1.0, nperseg=nperseg, detrend="constant", axis=-1)
    return freqs[1:], power[..., 1:]


def expected_context_psd(context: np.ndarray, window: int, nperseg: int, stride: int = 1) -> np.ndarray:
    """E[S_c]: mean Welch PSD over context windows of the forecast's length, (T,) -> (F,).

    A context shorter than `window` is used whole.
    """
    context = np.asarray(context, dtype=np.float64)
    if context.shape[-1] <= window:
        return psd(context, nperseg)[1]
    windows = np.lib.stride_tricks.sliding_window_view(context, window)[::stride]  # (W, window)
    return psd(windows, nperseg)[1].mean(axis=0)


def log_spectral_distance(
    forecast_psd: np.ndarray, reference_psd: np.ndarray, freqs: np.ndarray, floor: float
) -> np.ndarray:
    """`∫ |log S_x(ω) - log S_ref(ω)| dω` by the trapezoid rule: (B, F), (F,) -> (B,)."""
    log_x = np.log(np.maximum(forecast_psd, floor))
    log_ref = np.log(np.maximum(reference_psd, floor))
    return np.trapezoid(np.abs(log_x - log_ref), freqs, axis=-1)


def w1_between_psds(p: np.ndarray, q: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Wasserstein-1 between PSDs normalised to unit mass on a uniform grid: (..., F) -> (...).

    On a shared grid with spacing Δf, W1 = Σ_k |CDF_p(f_k) - CDF_q(f_k)| Δf.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    spacing = freqs[1] - freqs[0] if freqs.size > 1 else 0.0
    return np.abs(np.cumsum(p - q, axis=-1)).sum(axis=-1) * spacing


class SpectralPenalty:
    """The spectral term of the reward against one context, vectorised over forecasts.

    `penalty(x) = ∫ |log S_x(ω) - log E[S_c(ω)]| dω`, S Welch PSDs with a shared segment length.

    Args:
        context: the context series (T,) in the same units as the forecasts.
        horizon: forecast length H; the segment length is `min(config.segment, H)`.
    """

    def __init__(self, context: np.ndarray, horizon: int, config: SpectralConfig | None = None) -> None:
        self.config = config or SpectralConfig()
        self.nperseg = min(self.config.segment, horizon)
        if self.nperseg < MIN_HORIZON:
            raise ValueError(f"spectral penalty needs a horizon of at least {MIN_HORIZON} steps, got {horizon}")
        self.horizon = horizon
        self.context_psd = expected_context_psd(context, horizon, self.nperseg, self.config.context_stride)  # (F,)
        self.freqs = psd(np.zeros(self.nperseg), self.nperseg)[0]
        self.floor = max(self.config.rel_floor * float(self.context_psd.mean()), self.config.abs_floor)

    def __call__(self, forecasts: np.ndarray) -> np.ndarray:
        """(B, H) -> (B,) penalties (>= 0, zero when the forecast's spectrum equals the context's)."""
        _, power = psd(np.atleast_2d(forecasts), self.nperseg)
        return log_spectral_distance(power, self.context_psd, self.freqs, self.floor)

    def spec_w1(self, forecasts: np.ndarray) -> np.ndarray:
        """W1 between each forecast's normalised PSD and the expected context PSD, (B, H) -> (B,)."""
        _, power = psd(np.atleast_2d(forecasts), self.nperseg)
        return w1_between_psds(power, self.context_psd, self.freqs)


def spec_w1(forecasts: np.ndarray, truth: np.ndarray, segment: int = 24) -> np.ndarray:
    """Spec-W1 metric: W1 between normalised PSDs of each forecast and the truth, (B, H), (H,) -> (B,)."""
    nperseg = min(segment, np.asarray(truth).shape[-1])
    freqs, p = psd(np.atleast_2d(forecasts), nperseg)
    _, q = psd(truth, nperseg)
    return w1_between_psds(p, q, freqs)
