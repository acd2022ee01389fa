"""A text task shipped as an example: describe a series in words, rewarded for saying what the series does.

    python -m search.caption --config configs/text/caption.yaml

The prompt lists the last months of a built-in series and asks the base model to go on in words. The
reward (`CaptionReward`) reads the caption: +1 if it states the window's trend (up or down, from a
least-squares slope), −1 if it states the opposite, and +0.5 if the window is seasonal and the caption
says so. Base sampling (p truncated to its top k), MaxEnt-TS and SMC run at the same rollout budget on
every (series, seed); the table gives each method's mean over them of the samples' mean reward, the
captions' diversity (distinct word bigrams over all their bigrams) and NFE.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sadt.cli import CommandParser, run_command
from sadt.config import load_config

UP = ("increas", "rise", "rising", "rose", "grew", "grow", "up", "higher", "upward")
DOWN = ("decreas", "fall", "fell", "declin", "drop", "down", "lower", "downward")
MIN_CONTEXT = 6  # values: the seasonality test looks at lags 2 to a third of the window
SEASONAL = ("season", "cycl", "periodic", "every year", "each year", "summer", "winter", "peak")


@dataclass(frozen=True)
class CaptionConfig:
    series: list[str] = field(default_factory=lambda: ["AirPassengers"])
    context_length: int = 36  # the window: the last values of the series' history
    max_tokens: int = 24
    lam: float = 5.0
    top_k: int = 20  # every sampler draws from p truncated to its top k (the tree keeps k children a node)
    n_rollouts: int = 64  # rollouts (tree methods) or particles (SMC): the same budget for each
    n_samples: int = 16
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=lambda: ["ancestral", "maxent_ts", "smc"])
    output_dir: str = "outputs/caption"

    def __post_init__(self) -> None:
        from search.config import METHODS, SMC_METHODS, search_config

        known = (*METHODS, *SMC_METHODS)
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"caption `methods`: unknown method {unknown[0]!r}; choose from {known}")
        if not self.series or not self.seeds or not self.methods:
            raise ValueError("caption `series`, `seeds` and `methods` each need at least one entry")
        if min(self.max_tokens, self.top_k, self.n_rollouts, self.n_samples) < 1:
            raise ValueError("caption `max_tokens`, `top_k`, `n_rollouts`, `n_samples` must be >= 1")
        if self.context_length < MIN_CONTEXT:
            raise ValueError(f"caption `context_length` must be >= {MIN_CONTEXT} (a trend and a season need that "
                             f"many values), got {self.context_length}")
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"caption `lam` must be a finite number > 0 (λ = 0 is base sampling), got {self.lam}")
        for method in self.methods:
            if search_config(method=method, lam=self.lam).needs_head:
                raise ValueError(f"caption `methods`: {method!r} reads a flow head, and the caption task has none; "
                                 f"choose from methods without one")


def trend_sign(values: np.ndarray) -> int:
    """+1 rising, −1 falling: the sign of the least-squares slope."""
    return 1 if np.polyfit(np.arange(values.size), values, 1)[0] > 0 else -1


def is_seasonal(values: np.ndarray) -> bool:
    """Whether the detrended window repeats: its autocorrelation above 0.5 at some lag from 2 to a third of it
    (any period a window shows at least three times: months, quarters, the sunspot cycle)."""
    t = np.arange(values.size)
    rest = values - np.polyval(np.polyfit(t, values, 1), t)
    if rest.std() <= 1e-6 * values.std():  # a straight line: nothing to correlate
        return False
    return any(np.corrcoef(rest[:-lag], rest[lag:])[0, 1] > 0.5 for lag in range(2, values.size // 3 + 1))


def _says(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}", text) for w in words)


class CaptionReward:
    """r(caption) = +1 for the window's trend stated, −1 for the opposite one (0 for both or neither), + 0.5
    if the window is seasonal and the caption says so."""

    def __init__(self, values: np.ndarray) -> None:
        self.trend, self.seasonal = trend_sign(values), is_seasonal(values)

    def __call__(self, captions: list[str]) -> list[float]:
        return [self.score(c.lower()) for c in captions]

    def score(self, text: str) -> float:
        right, wrong = (UP, DOWN) if self.trend > 0 else (DOWN, UP)
        trend = float(_says(text, right)) - float(_says(text, wrong))
        return trend + (0.5 if self.seasonal and _says(text, SEASONAL) else 0.0)


def caption_prompt(name: str, values: np.ndarray) -> str:
    numbers = ", ".join(f"{v:g}" for v in values)
    return f"Values of the {name} series, in order: {numbers}.\nIn one sentence, over this period the series"


def distinct_bigrams(texts: list[str]) -> float:
    """Distinct word bigrams over all word bigrams of the texts (1 = no bigram repeated)."""
    bigrams = [tuple(words[i : i + 2]) for words in (t.lower().split() for t in texts) for i in range(len(words) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def caption_task(tokenizer, name: str, context_length: int, max_tokens: int):
    """The caption `TextTask` of built-in series `name`: its history's last `context_length` values in the
    prompt, `CaptionReward` on them."""
    from data.series import load_builtin
    from search.text_task import TextTask

    values = load_builtin(name).context[-context_length:]
    return TextTask.build(tokenizer, caption_prompt(name, values), CaptionReward(values), max_tokens=max_tokens)


def run(config: CaptionConfig) -> list[dict]:
    from sadt.lm.base_model import load_base_lm
    from search.config import search_config

    lm, tokenizer = load_base_lm()
    rows = []
    for name in config.series:
        task = caption_task(tokenizer, name, config.context_length, config.max_tokens)
        for seed in config.seeds:
            for method in config.methods:
                row_config = search_config(method=method, lam=config.lam, top_k=config.top_k, batch_size=16,
                                           n_rollouts=config.n_rollouts, n_samples=config.n_samples, seed=seed)
                lm.stats.reset()
                start = time.perf_counter()
                result = task.search(lm, row_config)
                captions = task.decode(result.samples)
                rows.append({"series": name, "seed": seed, "method": method,
                             "mean_reward": float(np.mean(result.sample_rewards)),
                             "distinct_bigrams": distinct_bigrams(captions), "nfe_tokens": lm.stats.tokens,
                             "wall_s": time.perf_counter() - start, "example": captions[0].strip()})
    return rows


def table(rows: list[dict], config: CaptionConfig) -> str:
    """Per method, the mean over (series, seed) runs, and the first run's first caption."""
    runs = len(config.series) * len(config.seeds)
    lines = [f"{', '.join(config.series)}; last {config.context_length} values; seeds {config.seeds}; λ = "
             f"{config.lam:g}, top_k = {config.top_k}, {config.n_rollouts} rollouts/particles, {config.n_samples} "
             f"samples; means over {runs} run(s)", "",
             "| method | mean reward | distinct bigrams | NFE tokens | wall s | a caption |",
             "|---|---|---|---|---|---|"]
    for method in config.methods:
        mine = [r for r in rows if r["method"] == method]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("mean_reward", "distinct_bigrams", "nfe_tokens",
                                                                  "wall_s")}
        lines.append(f"| {method} | {mean['mean_reward']:+.3f} | {mean['distinct_bigrams']:.2f} | "
                     f"{mean['nfe_tokens']:,.0f} | {mean['wall_s']:.0f} | {mine[0]['example']!r} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/text/caption.yaml"))
    args = parser.parse_args(argv)
    config = load_config(args.config, CaptionConfig)
    rows = run(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "caption.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = table(rows, config)
    (out / "caption.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
