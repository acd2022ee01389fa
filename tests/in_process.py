"""A command's entry point run in the test's own process, read as the command line would give it."""

import subprocess
from collections.abc import Callable


def in_process(command: Callable[[], int], capsys) -> subprocess.CompletedProcess:
    """A command's entry point called in this process, its exit status and output as the command line would give
    them: no fresh process importing torch (and pytorch_lightning, ~9 s) per case; a few tests still run the real
    commands."""
    capsys.readouterr()
    try:
        returncode = command()
    except SystemExit as exit_:  # the parsers' own refusals exit, as they do on the command line
        returncode = exit_.code
    return subprocess.CompletedProcess([], returncode, *capsys.readouterr())
