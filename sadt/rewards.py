"""The forecast reward `r(x) = r_task(x) - gamma * spectral(x)`, vectorised over a batch.

`r_task` is 0 for a forecast that parses to `horizon` values and `-invalid_penalty` otherwise,
minus `oracle_weight * mean|x - y| / mean|y|` when a held-out truth `y` is given (benchmark and
oracle mode only: the truth is never available to a real search), and minus `record_penalty` for a forecast
whose first value does not exceed the context's maximum (a sparse scenario constraint: "a new record next
step", which few draws of p meet and which the forecast's first number decides).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.signal
import scipy.special

from sadt.config import check_finite
from sadt.spectral import SpectralConfig, SpectralPenalty


class RewardError(ValueError):
    """A reward raised or produced a non-finite value; the message names the sample."""


MAX_WEIGHT = 1e6  # the largest reward weight a config may set
MAX_REWARD = 1e12  # the largest |r| a reward may return: λ·r and its sums stay far from float64's overflow


@dataclass(frozen=True)
class RewardConfig:
    gamma: float = 1.0  # weight of the spectral penalty
    invalid_penalty: float = 10.0  # r_task of a forecast that does not parse to `horizon` values
    oracle_weight: float = 0.0  # weight of the scaled error against a held-out truth (benchmarks only)
    record_penalty: float = 0.0  # r_task of a forecast whose first value is not above the context's maximum
    spectral: SpectralConfig = field(default_factory=SpectralConfig)

    def __post_init__(self) -> None:
        check_finite(self, "reward")
        # Weights past MAX_WEIGHT overflow: λ·γ·penalty becomes inf and the search's probabilities NaN.
        for name in ("gamma", "invalid_penalty", "oracle_weight", "record_penalty"):
            if not 0 <= getattr(self, name) <= MAX_WEIGHT:
                raise ValueError(f"reward `{name}` must be in [0, {MAX_WEIGHT:g}], got {getattr(self, name)}")


@dataclass
class RewardParts:
    total: np.ndarray  # (B,) r = task - gamma * spectral
    task: np.ndarray  # (B,)
    spectral: np.ndarray  # (B,) the unweighted penalty (0 for invalid rows)


class ForecastReward:
    """Scores forecasts of one context window, in the codec's scaled units.

    Args:
        context: (T,) scaled context the forecast continues.
        horizon: H, values per forecast.
        config: weights and spectral settings.
        truth: (H,) scaled held-out values; needed only when `config.oracle_weight > 0`.
    """

    def __init__(
        self, context: np.ndarray, horizon: int, config: RewardConfig | None = None, truth: np.ndarray | None = None
    ) -> None:
        self.config = config or RewardConfig()
        self.horizon = horizon
        self.context = np.asarray(context, dtype=np.float64)
        self.spectral = SpectralPenalty(context, horizon, self.config.spectral)
        if self.config.oracle_weight > 0:
            if truth is None or np.asarray(truth).shape != (horizon,):
                raise ValueError(f"reward `oracle_weight` > 0 needs a truth of shape ({horizon},)")
            self.truth = np.asarray(truth, dtype=np.float64)
        else:
            self.truth = None

    def __call__(self, values: np.ndarray, valid: np.ndarray) -> RewardParts:
        """values (B, H) scaled forecasts (NaN allowed in invalid rows), valid (B,) -> parts (B,)."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        valid = np.asarray(valid, dtype=bool)
        if values.shape != (valid.shape[0], self.horizon):
            raise RewardError(f"reward expects values of shape (B, {self.horizon}), got {values.shape}")
        bad = valid & ~np.all(np.isfinite(values), axis=1)
        if bad.any():
            raise RewardError(f"sample {int(np.argmax(bad))} is marked valid but has non-finite values")
        task = np.where(valid, 0.0, -self.config.invalid_penalty)
        spectral = np.zeros(valid.shape[0])
        if valid.any():
            spectral[valid] = self.spectral(values[valid])
            if self.truth is not None:
                err = np.mean(np.abs(values[valid] - self.truth), axis=1) / np.mean(np.abs(self.truth))
                task[valid] -= self.config.oracle_weight * err
            if self.config.record_penalty > 0:  # the look-ahead values (`partial`, `ahead`) do not read it
                task[valid] -= self.config.record_penalty * (values[valid, 0] <= self.context.max())
        total = task - self.config.gamma * spectral
        nonfinite = ~np.isfinite(total)
        if nonfinite.any():
            i = int(np.argmax(nonfinite))
            raise RewardError(f"reward of sample {i} is {total[i]} (values {values[i].tolist()})")
        return RewardParts(total=total, task=task, spectral=spectral)

    def partial(self, completed: list[np.ndarray]) -> np.ndarray:
        """The reward of partial forecasts, R(s) = −γ · penalty(w(s)), (B,).

        w(s) is the last H − k context values followed by the k ≤ H values that s has completed
        (values past the horizon are dropped), so R(s_0) scores the context's own tail and R(x) is
        r(x)'s spectral part for a finished forecast: the "forward-looking" energy of a partial
        state (Pan et al. 2023). It needs no truth, and an unfinished value does not count yet.
        """
        windows = []
        for done in completed:
            done = np.asarray(done, dtype=np.float64)[: self.horizon]
            windows.append(np.concatenate([self.context[len(self.context) - self.horizon + done.size :], done]))
        return -self.config.gamma * self.spectral(np.stack(windows))

    def ahead(self, completed: list[np.ndarray]) -> np.ndarray:
        """A look-ahead reward of partial forecasts, R⁺(s) = −γ · penalty(x̃(s)), (B,).

        x̃(s) is the k values s has completed followed by a seasonal-naive continuation of the
        context and those values for the other H − k steps (period: the context's periodogram peak,
        `dominant_period`), so R⁺ guesses the finished forecast's reward where R (`partial`) scores
        the context's tail, and R⁺(x) = R(x) once the forecast is finished.
        """
        return -self.config.gamma * self.spectral(self.seasonal_fill(completed)[0])

    def soft_ahead(self, completed: list[np.ndarray], lam: float, samples: int = 32, noise_scale: float = 1.0,
                   seed: int = 0) -> np.ndarray:
        """A soft look-ahead value of partial forecasts, (B,):

            V⁺(s) = (1/λ) log (1/K) Σ_j exp(λ r(x̃(s) + σ ε_j ⊙ m(s))),

        x̃(s) R⁺'s seasonal-naive completion, m(s) its filled (not yet written) steps, ε_j ~ N(0, I)
        drawn once from `seed` (the same K draws for every s: differences between states are not
        noise), σ = `noise_scale` × the context's seasonal-naive residual scale. Where R⁺ scores one
        guess of the rest of the forecast, V⁺ averages exp(λ r) over K guesses, as the soft value
        averages over p's futures: the more is left to write, the flatter V⁺ is across actions.
        V⁺ = R⁺ for a finished forecast (nothing filled) and for `noise_scale` 0.
        """
        if not lam > 0 or samples < 1 or noise_scale < 0:
            raise ValueError(f"soft_ahead needs lam > 0, samples >= 1 and noise_scale >= 0, got {lam}, {samples}, "
                             f"{noise_scale}")
        fills, written = self.seasonal_fill(completed)  # (B, H), (B,)
        filled = np.arange(self.horizon)[None, :] >= written[:, None]
        noise = np.random.default_rng(seed).standard_normal((samples, self.horizon))
        sigma = noise_scale * self.seasonal_residual_scale
        guesses = fills[:, None, :] + sigma * noise[None] * filled[:, None, :]  # (B, K, H)
        r = -self.config.gamma * self.spectral(guesses.reshape(-1, self.horizon)).reshape(len(fills), samples)
        return (scipy.special.logsumexp(lam * r, axis=1) - np.log(samples)) / lam

    def seasonal_fill(self, completed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each partial forecast's k ≤ H completed values followed by a seasonal-naive continuation (`ahead`),
        (B, H), and each k, (B,)."""
        windows, written = np.empty((len(completed), self.horizon)), np.empty(len(completed), dtype=np.int64)
        for row, done in enumerate(completed):
            done = np.asarray(done, dtype=np.float64)[: self.horizon]
            series = np.concatenate([self.context[-self.season :], done, np.empty(self.horizon - done.size)])
            for i in range(self.season + done.size, series.size):  # one season back, filled values included
                series[i] = series[i - self.season]
            windows[row], written[row] = series[self.season :], done.size
        return windows, written

    @functools.cached_property
    def seasonal_residual_scale(self) -> float:
        """The standard deviation of the context's seasonal differences c_t − c_{t−period}: how far a
        seasonal-naive guess typically misses, the noise scale of `soft_ahead`."""
        return float(np.std(self.context[self.season :] - self.context[: -self.season]))

    @functools.cached_property
    def season(self) -> int:
        """The seasonal-naive period of `ahead`: the context's periodogram peak (`dominant_period`)."""
        return dominant_period(self.context)


def dominant_period(series: np.ndarray) -> int:
    """The period of the periodogram's largest non-zero frequency, in steps (at most half the series)."""
    freqs, power = scipy.signal.periodogram(np.asarray(series, dtype=np.float64), detrend="linear")
    peak = freqs[1:][np.argmax(power[1:])]
    return int(np.clip(round(1.0 / peak), 1, len(series) // 2))


def _is_number(value) -> bool:
    """A real number (Python, NumPy or a 0-d tensor), not a string that happens to parse as one."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def checked_rewards(reward_fn, sequences: list[list[int]]) -> np.ndarray:
    """`reward_fn(sequences)` as float64 (B,); a failing reward function, a wrong shape, a reward that is
    not a number or not finite is a `RewardError` naming the batch or the sample."""
    try:
        raw = reward_fn(sequences)
    except (KeyboardInterrupt, RewardError):
        raise
    except Exception as err:  # a user's reward: say which batch it failed on, keep the cause chained
        raise RewardError(f"reward_fn raised {type(err).__name__}: {err} on a batch of {len(sequences)} sequences "
                          f"(first: actions {sequences[0] if sequences else []})") from err
    numeric = isinstance(raw, np.ndarray) and raw.dtype.kind in "biuf"  # the usual case: no per-item check
    values = [] if numeric else list(np.ravel(np.asarray(raw, dtype=object)))
    bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)  # strings too, even "1.0"
    if bad is not None:
        raise RewardError(f"reward of sample {bad} (actions {sequences[bad] if bad < len(sequences) else '?'}) is "
                          f"{values[bad]!r}, not a number")
    rewards = np.asarray(raw, dtype=np.float64)
    if rewards.shape != (len(sequences),):
        raise RewardError(f"reward_fn returned shape {rewards.shape} for {len(sequences)} sequences")
    bad = ~np.isfinite(rewards)
    if bad.any():
        i = int(np.argmax(bad))
        raise RewardError(f"reward of sample {i} (actions {sequences[i]}) is {rewards[i]}; rewards must be finite")
    bad = np.abs(rewards) > MAX_REWARD
    if bad.any():
        i = int(np.argmax(bad))
        raise RewardError(f"reward of sample {i} (actions {sequences[i]}) is {rewards[i]:g}, beyond ±{MAX_REWARD:g}: "
                          f"exp(λ r) would overflow; rescale the reward")
    return rewards
