"""What a forecasting run (`search.run`) writes: scores, the table, the plots and results.csv.

A metric or plot that cannot be computed is a warning and `UNDEFINED`, never the end of a run whose rows are
done; `results.csv` is rewritten after every row; user text (series, methods) is printed escaped.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data.published import published_results
from data.series import Series
from sadt.cli import one_line
from sadt.metrics import crps, scaled_mae
from sadt.plots import fan_chart, psd_comparison
from sadt.spectral import spec_w1

UNDEFINED = "undefined"  # a metric that cannot be computed here (e.g. scaled by an all-zero truth); "–": not scored


def scores(series: Series, forecasts: np.ndarray, segment: int) -> dict[str, float | str]:
    """CRPS, scaled MAE and Spec-W1 against the held-out truth; NaN past the series' end (no truth); `UNDEFINED`,
    with a warning on stderr, for one that cannot be computed (an all-zero truth, values that overflow)."""
    truth = series.truth
    if truth is None:
        return {"crps": float("nan"), "scaled_mae": float("nan"), "spec_w1": float("nan")}
    metrics = {"crps": lambda: crps(truth, forecasts), "scaled_mae": lambda: scaled_mae(truth, forecasts),
               "spec_w1": lambda: float(spec_w1(forecasts, truth, segment).mean())}
    out: dict[str, float | str] = {}
    for name, compute in metrics.items():
        try:
            with np.errstate(all="ignore"):
                value = float(compute())
            problem = None if np.isfinite(value) else f"it came out {value}"
        except (ValueError, FloatingPointError, ZeroDivisionError) as err:
            problem = str(err)
        out[name] = value if problem is None else UNDEFINED
        if problem is not None:
            warn(f"{series.name}: {name} is undefined ({problem})")
    return out


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def draw_plots(out_dir: Path, series: Series, forecasts: dict[str, np.ndarray], segment: int) -> None:
    """The series' fan chart and PSD comparison; a plot that cannot be drawn (values matplotlib cannot place)
    is a warning, never the end of a job whose rows are done."""
    span = f"the last {series.horizon} steps" if series.held_out else f"{series.horizon} steps past the end"
    nperseg = min(segment, series.horizon)
    plots = {
        f"{series.name}_fan.png": lambda path: fan_chart(path, series.context, series.truth, forecasts,
                                                         f"{series.name}: forecasts of {span}"),
        f"{series.name}_psd.png": lambda path: psd_comparison(path, series.context, series.truth, forecasts,
                                                              nperseg, series.name),
    }
    for name, draw in plots.items():
        try:
            with np.errstate(all="ignore"):
                draw(out_dir / name)
        except (ValueError, OverflowError, FloatingPointError, RuntimeError) as err:
            warn(f"{name} not drawn: {one_line(str(err))}")


def score_cell(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return "–" if np.isnan(value) else f"{value:.4f}"


class ResultsFile:
    """`results.csv`, rewritten whole (through a temporary file, atomically) after every row, so a job stopped
    or failed later keeps every finished row."""

    def __init__(self, out_dir: Path) -> None:
        self.path, self.rows = out_dir / "results.csv", []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        partial.replace(self.path)


def check_output_dir(path: Path) -> None:
    """Refuse an `output_dir` that is a file, lies under a file or cannot be written, before the model loads
    (nothing is created yet)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"`output_dir` {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"`output_dir` {path}: {existing} is not writable")


def print_table(rows: list[dict], console: Console, held_out: bool = True) -> None:
    title = ("Held-out forecasts (LLMTime protocol: last 20% of each series)" if held_out
             else "Forecasts past the end of each series (no truth: CRPS, MAE, Spec-W1 not scored)")
    table = Table(title=title)
    for name in ("series", "method", "CRPS", "scaled MAE", "Spec-W1", "reward", "NFE tok", "fwd", "wall s", "peak MB"):
        table.add_column(name, justify="left" if name in ("series", "method") else "right")
    for i, row in enumerate(rows):
        table.add_row(
            escape(row["series"]), escape(row["method"]),
            *(score_cell(row[k]) for k in ("crps", "scaled_mae", "spec_w1")),
            f"{row['reward']:.3f}", str(row["nfe_tokens"]), str(row["forward_calls"]), f"{row['wall_s']:.1f}",
            f"{row['peak_rss_mb']:.0f}",
        )
        if not held_out or i + 1 < len(rows) and rows[i + 1]["series"] == row["series"]:
            continue  # LLMTime's published rows once per series, after its last method
        for ref in published_results(row["series"]):
            table.add_row("", f"[dim]LLMTime: {ref['method']}[/dim]", f"[dim]{ref['crps']:.4f}[/dim]",
                          f"[dim]{ref['mae']:.4f}[/dim]", "", "", "", "", "", "")
    console.print(table)


