"""Benchmark rows as CSV tables and summaries as markdown: written whole, read back typed for `--resume` and
`--summarise`. (`benchmarks.evaluation.store.RowStore` is the locked, per-unit store the samplers benchmark uses.)"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV; a column some rows lack (an earlier run's, resumed) is left empty there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


TEXT_COLUMNS = ("series", "method", "curve", "proposal")  # the amortisation benchmark's; the rest are numbers


def read_typed_rows(path: Path, text_columns: tuple[str, ...] = TEXT_COLUMNS) -> list[dict]:
    """real.csv back as rows (numbers parsed, empty cells NaN), for `--summarise` after an interrupted run."""
    rows = []
    for row in csv.DictReader(path.open()):
        rows.append({k: v if k in text_columns else float(v or "nan") for k, v in row.items()})
    return rows


def earlier_rows(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path, **read_kwargs) -> list[dict]:
    """The rows of `path` when `--resume` or `--summarise` asks for them (a clear error if it is missing), else []."""
    if not (args.resume or args.summarise):
        return []
    if not path.is_file():
        parser.error(f"--{'resume' if args.resume else 'summarise'} needs an earlier run's rows: no file {path}")
    return read_typed_rows(path, **read_kwargs)


def write_summary(path: Path, parts: list[str]) -> None:
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    print(text)
