"""Figures people look at: a forecast fan chart and a PSD comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sadt.spectral import expected_context_psd, psd  # noqa: E402

SAMPLE_PATHS = 3  # individual forecasts drawn per method in the fan chart


def fan_chart(
    path: Path, context: np.ndarray, truth: np.ndarray | None, forecasts: dict[str, np.ndarray], title: str
) -> Path:
    """Context, truth (None past the series' end), and per method the median with 10-90% and 25-75% bands
    of its samples, and a few of its sample paths (a median of seasonal samples in different phases is flat
    and hides them)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    t_context = np.arange(context.size)
    t_future = np.arange(context.size, context.size + forecast_length(truth, forecasts))
    ax.plot(t_context, context, color="black", lw=1.2, label="context")
    if truth is not None:
        ax.plot(t_future, truth, color="black", lw=1.2, ls="--", label="held-out truth")
    for (name, samples), color in zip(forecasts.items(), plt.cm.tab10.colors):
        lo, q25, med, q75, hi = np.quantile(samples, [0.1, 0.25, 0.5, 0.75, 0.9], axis=0)
        ax.fill_between(t_future, lo, hi, color=color, alpha=0.15, lw=0)
        ax.fill_between(t_future, q25, q75, color=color, alpha=0.3, lw=0)
        ax.plot(t_future, med, color=color, lw=1.6, label=f"{name} median ({len(samples)} samples)")
        for path_values in samples[:SAMPLE_PATHS]:
            ax.plot(t_future, path_values, color=color, lw=0.6, alpha=0.7)
    ax.axvline(context.size - 0.5, color="grey", lw=0.8)
    ax.set(title=title, xlabel="step", ylabel="value")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def psd_comparison(
    path: Path, context: np.ndarray, truth: np.ndarray | None, forecasts: dict[str, np.ndarray], nperseg: int,
    title: str,
) -> Path:
    """Welch PSDs (log scale): expected context PSD, truth (None past the end), and the mean PSD of each
    method's samples.

    The y-axis spans the context's and truth's PSDs with two decades of room each way, so a method
    whose samples are nearly flat (PSD ~1e-30) shows as off the bottom rather than squashing the rest."""
    context_psd = expected_context_psd(context, forecast_length(truth, forecasts), nperseg)
    method_psds = {name: psd(samples, nperseg) for name, samples in forecasts.items()}
    freqs = next(iter(method_psds.values()))[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(freqs, context_psd, color="black", lw=1.5, label="context E[S_c]")
    reference = context_psd
    if truth is not None:
        truth_psd = psd(truth, nperseg)[1]
        ax.semilogy(freqs, truth_psd, color="black", ls="--", lw=1.2, label="held-out truth")
        reference = np.concatenate([context_psd, truth_psd])
    reference = reference[reference > 0]
    bottom = reference.min() / 100 if reference.size else 0.0
    for (name, (_, sample_psd)), color in zip(method_psds.items(), plt.cm.tab10.colors):
        mean_psd = sample_psd.mean(axis=0)
        below = " (below the axis: nearly flat)" if bottom and mean_psd.max() < bottom else ""
        ax.semilogy(freqs, mean_psd, color=color, lw=1.5, label=f"{name} (mean over samples){below}")
    if reference.size:
        ax.set_ylim(bottom, reference.max() * 100)
    ax.set(title=title, xlabel="frequency (cycles / step)", ylabel="PSD")
    ax.legend(fontsize=8)
    return _save(fig, path)


def forecast_length(truth: np.ndarray | None, forecasts: dict[str, np.ndarray]) -> int:
    """Steps forecast: the truth's length, or the forecasts' past a series' end (no truth)."""
    return truth.size if truth is not None else next(iter(forecasts.values())).shape[1]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
