"""LLMTime's published per-series results (Gruver et al. 2023, Darts table), shipped as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

PUBLISHED_CSV = Path(__file__).with_name("llmtime_published.csv")


def published_results(dataset: str, methods: tuple[str, ...] = ("GPT-3", "LLaMA-2 7B", "ARIMA")) -> list[dict]:
    """Rows `{method, crps, mae}` for `dataset`, in the order of `methods` (missing ones skipped)."""
    with PUBLISHED_CSV.open(newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f) if r["dataset"] == dataset}
    return [
        {"method": m, "crps": float(rows[m]["crps"]), "mae": float(rows[m]["mae"])} for m in methods if m in rows
    ]
