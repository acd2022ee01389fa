"""The held-out windows every real-series benchmark scores on: LLMTime's test part, cut into horizons."""

from __future__ import annotations

import numpy as np


def heldout_windows(name: str, windows_per_series: int, context_length: int,
                    horizon: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, context, truth) for window k = 0, 1, ... of `name`'s test part.

    Truth: test steps [k·horizon, (k+1)·horizon); context: the `context_length` steps before them.
    """
    from data.series import load_builtin

    if windows_per_series < 1:
        raise ValueError(f"windows_per_series must be >= 1, got {windows_per_series}")
    series = load_builtin(name)
    n_fit = series.horizon // horizon
    if n_fit == 0:
        raise ValueError(f"{name}: test part of {series.horizon} steps is shorter than horizon {horizon}")
    start = len(series.context)
    windows = []
    for k in range(min(windows_per_series, n_fit)):
        t = start + k * horizon
        if t < context_length:
            raise ValueError(f"{name}: {t} steps before window {k}, fewer than context_length {context_length}")
        label = name if k == 0 else f"{name}+{k * horizon}"
        windows.append((label, series.values[t - context_length : t], series.values[t : t + horizon]))
    return windows
