"""Time series to forecast: LLMTime's Darts series (shipped inside pmdarima) and users' CSVs.

LLMTime's protocol (Gruver et al. 2023): the last 20% of each series (rounded up) is the test
horizon. Lengths: AirPassengers 144 (test 29), AusBeer 211 (43, pmdarima's trailing NaN
dropped), Sunspots every 4th monthly point 705 (141), Wine 176 (36), Wooly 119 (24).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN = {
    "AirPassengers": "load_airpassengers",
    "AusBeer": "load_ausbeer",
    "Sunspots": "load_sunspots",
    "Wine": "load_wineind",
    "Wooly": "load_woolyrnq",
}


@dataclass(frozen=True)
class Series:
    name: str
    values: np.ndarray  # (T,) the whole series
    horizon: int  # steps to forecast: the test steps at the end, or steps past the end (`held_out` false)
    held_out: bool = True  # back-test: the last `horizon` values are the truth; else forecast past the end

    @property
    def context(self) -> np.ndarray:
        return self.values[: -self.horizon] if self.held_out else self.values

    @property
    def truth(self) -> np.ndarray | None:
        """The held-out values, or None for a forecast past the end (nothing to score against)."""
        return self.values[-self.horizon :] if self.held_out else None

    def past_end(self, horizon: int) -> Series:
        """The whole series as context and `horizon` steps after its end to forecast."""
        if horizon < 1:
            raise ValueError(f"{self.name}: `horizon` must be >= 1 steps past the end, got {horizon}")
        return Series(name=self.name, values=self.values, horizon=horizon, held_out=False)


def llmtime_horizon(length: int, test_fraction: float = 0.2) -> int:
    """ceil(test_fraction * length), robust to float error (705 * 0.2 is 141, not 142)."""
    return math.ceil(round(length * test_fraction, 9))


def load_builtin(name: str, test_fraction: float = 0.2) -> Series:
    """One of LLMTime's five Darts series, from pmdarima's bundled copies (no download)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown series {name!r}; built-in series are {sorted(BUILTIN)}")
    import pmdarima.datasets

    values = np.asarray(getattr(pmdarima.datasets, BUILTIN[name])(), dtype=np.float64)
    if name == "AusBeer":
        values = values[~np.isnan(values)]
    if name == "Sunspots":
        values = values[::4]  # LLMTime uses every 4th monthly point
    return Series(name=name, values=values, horizon=llmtime_horizon(values.size, test_fraction))


def load_csv(path: str | Path, column: str | int, test_fraction: float = 0.2, horizon: int | None = None) -> Series:
    """A numeric column of a CSV file with a header row.

    Args:
        path: the CSV file.
        column: header name, or 0-based column index.
        horizon: test steps; default `ceil(test_fraction * length)`.

    Raises:
        ValueError: naming the file, row and column of an empty, missing or non-numeric cell.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 CSV") from None
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    header = rows[0]
    if isinstance(column, int):
        if not 0 <= column < len(header):
            raise ValueError(f"{path}: column index {column} out of range (the header has {len(header)} columns)")
        index = column
    elif column in header:
        index = header.index(column)
    else:
        raise ValueError(f"{path}: no column {column!r}; the header has {header}")
    name = header[index]
    values = []
    for row_number, row in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
        cell = row[index].strip() if index < len(row) else ""
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{path}: row {row_number}, column {name!r}: {cell!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}: row {row_number}, column {name!r}: {cell!r} is not a finite number")
        values.append(value)
    if len(values) < 8:
        raise ValueError(f"{path}: column {name!r} has {len(values)} values; need at least 8")
    values = np.asarray(values)
    horizon = horizon if horizon is not None else llmtime_horizon(values.size, test_fraction)
    if not 1 <= horizon < values.size:
        raise ValueError(f"{path}: horizon {horizon} must be in [1, {values.size - 1}]")
    return Series(name=f"{path.stem}:{name}", values=values, horizon=horizon)
