"""A resumable store of benchmark rows: a CSV rewritten whole (atomically) after every finished unit of work."""

from __future__ import annotations

import csv
import fcntl
import os
from collections.abc import Iterable
from pathlib import Path


class RowStore:
    """Rows keyed by `key` columns; `done(key)` says whether a unit of work already has its rows on disk.

    A unit's rows are added together (`add`) and written at once, so an interrupted run resumes at the first
    unit it had not finished and never keeps half a unit. `defaults` gives key columns that rows written before
    the column existed lack, with the value those rows meant (e.g. `{"repeat": 0}`).
    """

    def __init__(self, path: Path, key: tuple[str, ...], resume: bool, defaults: dict | None = None) -> None:
        self.path, self.key, self.defaults = Path(path), key, defaults or {}
        self.rows: list[dict] = [self._completed(r) for r in read_rows(self.path)] \
            if resume and self.path.exists() else []
        self._done = {self._key_of(r) for r in self.rows}

    def _completed(self, row: dict) -> dict:
        """The row with `defaults` where it lacks them (a CSV gives a column a row lacked back as "")."""
        return {**row, **{k: v for k, v in self.defaults.items() if row.get(k, "") == ""}}

    def _key_of(self, row: dict) -> tuple[str, ...]:
        return tuple(key_text(row[k]) for k in self.key)

    def done(self, *key) -> bool:
        return tuple(key_text(k) for k in key) in self._done

    def row(self, *key) -> dict:
        """The row stored under `key` (the last one, if a unit wrote several)."""
        wanted = tuple(key_text(k) for k in key)
        return next(r for r in reversed(self.rows) if self._key_of(r) == wanted)

    def add(self, rows: Iterable[dict]) -> None:
        """Add one unit's rows and rewrite the file, merged under a lock with what other processes (shards of
        the same run) wrote to it meanwhile."""
        rows = list(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = [self._completed(r) for r in read_rows(self.path)] if self.path.exists() else []
            mine = {self._key_of(r) for r in self.rows + rows}
            self.rows = [r for r in on_disk if self._key_of(r) not in mine] + self.rows + rows
            self._done = {self._key_of(r) for r in self.rows}
            write_rows(self.path, self.rows)


def key_text(value) -> str:
    """A key cell as text, numbers normalised: 1, 1.0 and "1.0" (as a CSV gives it back) are one key."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def write_rows(path: Path, rows: list[dict]) -> None:
    """All rows to `path` as CSV (columns in first-seen order), via a temporary file and an atomic rename."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by `write_rows`, numbers parsed back to float where they parse."""
    def parse(value: str):
        try:
            return float(value)
        except ValueError:
            return value

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
