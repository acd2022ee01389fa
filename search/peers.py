"""The peer a user would pick instead of an LM: AutoARIMA (pmdarima), fitted on the same context.

`auto_arima_samples` fits `pmdarima.auto_arima` on the context (seasonal with period m when m > 1,
`seasonal_period`; stepwise search over small orders) and draws forecast samples from its Gaussian predictive marginals:
step t gets mean μ_t and σ_t from the 95% interval, `(upper − lower) / (2 · 1.96)`. CRPS in LLMTime's
quantile form reads each step's marginal only, so marginal samples score ARIMA exactly as its own
predictive distribution would.
"""

from __future__ import annotations

import warnings

import numpy as np

Z_975 = 1.959963984540054  # the 97.5% standard-normal quantile


def seasonal_period(context: np.ndarray, candidates: tuple[int, ...] = (4, 6, 7, 12, 24, 52)) -> int:
    """The calendar period (quarterly, half-yearly, weekly, monthly, ...) whose lag autocorrelation of the
    differenced context is largest and above 0.2; 1 (no season) otherwise. Periods above a third of the
    context are not tried."""
    diff = np.diff(np.asarray(context, dtype=np.float64))
    diff = diff - diff.mean()
    energy = float(np.dot(diff, diff))
    best, best_acf = 1, 0.2
    for m in candidates:
        if energy > 0 and m <= diff.size // 3:
            acf = float(np.dot(diff[:-m], diff[m:])) / energy
            if acf > best_acf:
                best, best_acf = m, acf
    return best


def auto_arima_samples(context: np.ndarray, horizon: int, n_samples: int, season: int, seed: int = 0) -> np.ndarray:
    """(n_samples, horizon) forecasts in the context's units from AutoARIMA's predictive marginals."""
    import pmdarima

    context = np.asarray(context, dtype=np.float64)
    seasonal = 1 < season <= context.size // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter on short series
        try:
            model = _fit(pmdarima, context, season if seasonal else 1)
        except (ValueError, np.linalg.LinAlgError):  # e.g. the seasonal-differencing test on an exact sine
            model = _fit(pmdarima, context, 1)
        mean, interval = model.predict(n_periods=horizon, return_conf_int=True, alpha=0.05)
    mean = np.asarray(mean, dtype=np.float64)
    sigma = np.maximum((interval[:, 1] - interval[:, 0]) / (2 * Z_975), 0.0)
    return mean + sigma * np.random.default_rng(seed).standard_normal((n_samples, horizon))


def _fit(pmdarima, context: np.ndarray, season: int):
    """Stepwise AutoARIMA over small orders (seconds, not minutes, per series); seasonal when season > 1."""
    return pmdarima.auto_arima(context, seasonal=season > 1, m=season, stepwise=True, max_p=3, max_q=3, max_P=1,
                               max_Q=1, suppress_warnings=True, error_action="ignore")
