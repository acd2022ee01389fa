"""How every command ends on bad input: one line on stderr naming the file, field or value, exit status 2.

Configs (`ConfigError`), buffers (`BufferError`), heads (`HeadMismatchError`), rewards (`RewardError`) and
range checks all raise `ValueError` subclasses with such a message, and a missing file `FileNotFoundError`;
a command's `__main__` hands its `main` to `run_command` instead of letting them end in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

BAD_INPUT = (ValueError, FileNotFoundError)


def one_line(message: str) -> str:
    """A (possibly multi-line) parser message as one line."""
    return " ".join(message.split())


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument is `error: <prog>: <message>` on one line and exit status 2 (no usage block;
    `--help` still prints it)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """`main(argv)`'s exit status; bad input is `error: <message>` on stderr and status 2."""
    try:
        return main(argv) or 0
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
