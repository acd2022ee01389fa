"""How every command ends on bad input: one line on stderr naming the file, field or value, exit status 2.

Configs (`ConfigError`), buffers (`BufferError`), heads (`HeadMismatchError`), rewards (`RewardError`) and
range checks all raise `ValueError` subclasses with such a message, and a missing file `FileNotFoundError`;
a command's `__main__` hands its `main` to `run_command` instead of letting them end in a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

BAD_INPUT = (ValueError, FileNotFoundError)


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """`main(argv)`'s exit status; bad input is `error: <message>` on stderr and status 2."""
    try:
        return main(argv) or 0
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
