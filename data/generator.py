"""Synthetic context series for training a flow head on many more prompts than five series give.

The reward needs no truth, so a training context is any series that looks like data a user would
forecast. Each series is a sum of components drawn at random, then rescaled and shifted:

    y_t = level · (1 + m·s_t) · (trend_t + a·s_t + noise_t + shift_t) + offset

with `s_t` one or two seasonal waves (periods from monthly, weekly, quarterly, yearly data, harmonics
in random proportion), `trend_t` linear or damped (φ^t-shrinking slope), `noise_t` AR(1) or AR(2)
of random strength or a random walk, `shift_t` a few level shifts; `m` > 0 makes the seasonal
amplitude multiplicative (growing with the level). Scales span 1e-2 to 1e6; a fraction is kept
strictly positive, the rest may change sign.

`generate(seed, n, length)` is seeded and reproducible: series i depends only on (seed, i), so a
harvest of the first 500 series and one of the first 1000 agree on the 500 they share. Each series
records the families it was drawn from (`GeneratedSeries.families`), which the tests count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Every family a series may be drawn from; a test fails if one stops appearing.
FAMILIES = (
    "linear_trend", "damped_trend", "no_trend",
    "one_season", "two_seasons", "no_season", "multiplicative_season",
    "ar1", "ar2", "random_walk",
    "level_shift", "positive", "sign_changing",
)
PERIODS = (4, 6, 7, 12, 13, 24, 52)  # quarterly, half-yearly, weekly, monthly, 4-weekly, bi-monthly, yearly-weekly


@dataclass(frozen=True)
class GeneratedSeries:
    name: str  # "gen<seed>-<index>": the harvest's prompt key
    values: np.ndarray  # (length,) float64
    families: frozenset[str]


def generate(seed: int, n: int, length: int, start: int = 0) -> list[GeneratedSeries]:
    """Series `start .. start + n - 1` of the generator with this seed, each `length` steps long."""
    if length < 8:
        raise ValueError(f"generated series need length >= 8, got {length}")
    return [generate_one(seed, i, length) for i in range(start, start + n)]


def generate_one(seed: int, index: int, length: int) -> GeneratedSeries:
    """Series `index` of the generator `seed`: its own random stream, so it does not depend on others."""
    rng = np.random.default_rng([seed, index])
    t = np.arange(length, dtype=np.float64)
    families: set[str] = set()
    season = _season(rng, t, families)
    shape = _trend(rng, t, length, families) + season * (0.0 if "multiplicative_season" in families else 1.0)
    shape = shape + _noise(rng, length, families) + _level_shifts(rng, length, families)
    if "multiplicative_season" in families:
        shape = shape * (1.0 + 0.5 * season)
    values = _place(rng, shape, families)
    return GeneratedSeries(name=f"gen{seed}-{index}", values=values, families=frozenset(families))


def _season(rng: np.random.Generator, t: np.ndarray, families: set[str]) -> np.ndarray:
    """Zero, one or two seasonal waves of unit-order amplitude, each with a random harmonic mix."""
    count = rng.choice([0, 1, 2], p=[0.15, 0.55, 0.30])
    families.add(("no_season", "one_season", "two_seasons")[count])
    wave = np.zeros_like(t)
    for period in rng.choice(PERIODS, size=count, replace=False):
        harmonics = rng.normal(size=(3, 2)) * np.array([[1.0], [0.4], [0.2]])
        for k, (a, b) in enumerate(harmonics, start=1):
            wave += a * np.sin(2 * np.pi * k * t / period) + b * np.cos(2 * np.pi * k * t / period)
    if count and rng.random() < 0.35:
        families.add("multiplicative_season")
    return wave / max(np.abs(wave).max(), 1e-12) if count else wave


def _trend(rng: np.random.Generator, t: np.ndarray, length: int, families: set[str]) -> np.ndarray:
    """Linear, damped (slope shrinking by φ each step) or none; total rise of order one over the series."""
    kind = rng.choice(["linear_trend", "damped_trend", "no_trend"], p=[0.4, 0.3, 0.3])
    families.add(kind)
    rise = rng.normal(0.0, 1.5)
    if kind == "linear_trend":
        return rise * t / length
    if kind == "damped_trend":
        phi = rng.uniform(0.85, 0.99)
        return rise * (1 - phi ** (t + 1)) / (1 - phi ** (length + 1))
    return np.zeros_like(t)


def _noise(rng: np.random.Generator, length: int, families: set[str]) -> np.ndarray:
    """AR(1), AR(2) or a random walk, with a strength from nearly clean to noise-dominated."""
    kind = rng.choice(["ar1", "ar2", "random_walk"], p=[0.45, 0.3, 0.25])
    families.add(kind)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(0.5)))
    eps = rng.normal(0.0, sigma, size=length + 2)
    if kind == "random_walk":
        return np.cumsum(eps[2:]) / np.sqrt(length) * 3
    coef = [rng.uniform(-0.5, 0.95), 0.0] if kind == "ar1" else _stationary_ar2(rng)
    out = np.zeros(length + 2)
    for i in range(2, length + 2):
        out[i] = coef[0] * out[i - 1] + coef[1] * out[i - 2] + eps[i]
    return out[2:]


def _stationary_ar2(rng: np.random.Generator) -> list[float]:
    """AR(2) coefficients inside the stationarity triangle (|φ2| < 1, φ2 ± φ1 < 1)."""
    while True:
        phi1, phi2 = rng.uniform(-1.5, 1.5), rng.uniform(-0.9, 0.9)
        if phi2 + phi1 < 0.95 and phi2 - phi1 < 0.95:
            return [phi1, phi2]


def _level_shifts(rng: np.random.Generator, length: int, families: set[str]) -> np.ndarray:
    """One to three step changes, in a fifth of the series."""
    if rng.random() >= 0.2:
        return np.zeros(length)
    families.add("level_shift")
    shifts = np.zeros(length)
    for at in rng.integers(length // 4, length, size=rng.integers(1, 4)):
        shifts[at:] += rng.normal(0.0, 0.7)
    return shifts


def _place(rng: np.random.Generator, shape: np.ndarray, families: set[str]) -> np.ndarray:
    """Scale to 1e-2..1e6 and shift: positive-only (most real data) or around zero (may change sign)."""
    scale = 10 ** rng.uniform(-2, 6)
    spread = max(np.ptp(shape), 1e-9)
    unit = (shape - shape.mean()) / spread  # spread 1, mean 0
    if rng.random() < 0.75:
        families.add("positive")
        floor = unit.min()
        return scale * (unit - floor + rng.uniform(0.05, 3.0))  # min between 5% and 300% of the spread
    families.add("sign_changing")
    return scale * (unit - np.quantile(unit, rng.uniform(0.2, 0.8)))  # zero inside the range: both signs


def plot_grid(series: list[GeneratedSeries], path: str, columns: int = 4) -> None:
    """A grid of generated series, each titled with its families, so a reader sees what a head trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(series) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, series):
        ax.plot(s.values, lw=1)
        ax.set_title(f"{s.name}\n" + ", ".join(sorted(s.families - {"positive"})), fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m data.generator --seed 0 --n 24 --length 48 --plot grid.png`: draw and plot a grid."""
    from sadt.cli import CommandParser

    parser = CommandParser(description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--plot", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    try:
        plot_grid(generate(args.seed, args.n, args.length), args.plot)
    except ValueError as err:
        parser.error(str(err))
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
