"""The default job: forecast held-out series with the base model, print a table, save plots.

    python -m search.demo --config configs/demo/airpassengers.yaml

For each series it samples N forecasts of the held-out horizon (LLMTime protocol), and reports
CRPS, scaled MAE, Spec-W1 (against the truth's PSD), the mean reward, NFE (LM token positions),
forward calls, wall time and peak memory, with LLMTime's published numbers beside ours.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data.published import published_results
from data.series import Series, load_builtin, load_csv
from sadt.codec import Codec, CodecConfig
from sadt.config import ConfigError, load_config, to_dict
from sadt.lm.base_model import load_base_lm
from sadt.metrics import crps, scaled_mae
from sadt.plots import fan_chart, psd_comparison
from sadt.rewards import ForecastReward, RewardConfig
from sadt.spectral import spec_w1
from search.ancestral import sample_forecasts


@dataclass(frozen=True)
class DemoConfig:
    series: list[str] = field(default_factory=lambda: ["AirPassengers"])  # built-in names
    csv: str | None = None  # a user's CSV file instead of the built-in series
    column: str = "value"  # the CSV column to forecast
    n_samples: int = 20  # forecasts per series
    batch_size: int = 20  # rollouts per LM batch
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    output_dir: str = "outputs/demo"
    codec: CodecConfig = field(default_factory=CodecConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"`n_samples` must be >= 1, got {self.n_samples}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")


def run_series(lm, codec: Codec, series: Series, config: DemoConfig, out_dir: Path) -> dict:
    """Sample, score and plot one series; returns its table row."""
    lm.stats.reset()
    start = time.perf_counter()
    samples = sample_forecasts(
        lm, codec, series.context, series.horizon, n_samples=config.n_samples, batch_size=config.batch_size,
        temperature=config.temperature, top_k=config.top_k, seed=config.seed,
    )
    wall = time.perf_counter() - start
    if not samples.valid.any():
        raise RuntimeError(f"{series.name}: none of the {config.n_samples} forecasts parsed")
    reward = ForecastReward(samples.scaler.transform(series.context), series.horizon, config.reward)
    rewards = reward(samples.scaled, samples.valid).total
    forecasts = samples.values
    row = {
        "series": series.name,
        "method": "base sampling",
        "samples": int(samples.valid.sum()),
        "crps": crps(series.truth, forecasts),
        "scaled_mae": scaled_mae(series.truth, forecasts),
        "spec_w1": float(spec_w1(forecasts, series.truth, config.reward.spectral.segment).mean()),
        "reward": float(rewards.mean()),
        "nfe_tokens": lm.stats.tokens,
        "forward_calls": lm.stats.forward_calls,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    plots = {"base sampling": forecasts}
    title = f"{series.name}: {row['samples']} forecasts of the last {series.horizon} steps"
    fan_chart(out_dir / f"{series.name}_fan.png", series.context, series.truth, plots, title)
    nperseg = min(config.reward.spectral.segment, series.horizon)
    psd_comparison(out_dir / f"{series.name}_psd.png", series.context, series.truth, plots, nperseg, series.name)
    return row


def print_table(rows: list[dict], console: Console) -> None:
    table = Table(title="Held-out forecasts (LLMTime protocol: last 20% of each series)")
    for name in ("series", "method", "CRPS", "scaled MAE", "Spec-W1", "reward", "NFE tok", "fwd", "wall s", "peak MB"):
        table.add_column(name, justify="left" if name in ("series", "method") else "right")
    for row in rows:
        table.add_row(
            row["series"], row["method"], f"{row['crps']:.4f}", f"{row['scaled_mae']:.4f}", f"{row['spec_w1']:.4f}",
            f"{row['reward']:.3f}", str(row["nfe_tokens"]), str(row["forward_calls"]), f"{row['wall_s']:.1f}",
            f"{row['peak_rss_mb']:.0f}",
        )
        for ref in published_results(row["series"]):
            table.add_row("", f"[dim]LLMTime: {ref['method']}[/dim]", f"[dim]{ref['crps']:.4f}[/dim]",
                          f"[dim]{ref['mae']:.4f}[/dim]", "", "", "", "", "", "")
    console.print(table)


def load_series_list(config: DemoConfig) -> list[Series]:
    if config.csv is not None:
        return [load_csv(config.csv, config.column)]
    return [load_builtin(name) for name in config.series]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forecast held-out series with the base model.")
    parser.add_argument("--config", type=Path, default=Path("configs/demo/airpassengers.yaml"))
    parser.add_argument("--series", nargs="+", help="override the config's series (built-in names)")
    parser.add_argument("--n-samples", type=int, help="override the config's n_samples")
    args = parser.parse_args(argv)
    console = Console(width=150)  # a wide table even when piped to a log
    try:
        config = load_config(args.config, DemoConfig)
        overrides = {"series": args.series, "n_samples": args.n_samples}
        config = DemoConfig(**{**to_dict_shallow(config), **{k: v for k, v in overrides.items() if v is not None}})
        series_list = load_series_list(config)
    except (ConfigError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    lm, tokenizer = load_base_lm(dtype=config.dtype, device=config.device)
    codec = Codec(tokenizer, config.codec)
    out_dir = Path(config.output_dir)
    rows = [run_series(lm, codec, s, config, out_dir) for s in series_list]
    print_table(rows, console)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    console.print(f"plots and results.csv in {out_dir}/")
    return 0


def to_dict_shallow(config: DemoConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


if __name__ == "__main__":
    sys.exit(main())
