"""Train F_φ: `python -m trainers.fit --config configs/fit/soft_ahead.yaml` (LightningCLI, `--help` lists every option).

Every option can be overridden on the command line, e.g. `--model.lam 2.0 --model.losses.tb 1 --trainer.max_epochs 20`
(the model's options come in groups: `head`, `losses`, `optimiser`, `features`, `lora`; `trainers.options`);
`--ckpt_path outputs/fit/lightning_logs/version_0/checkpoints/last.ckpt` resumes a run.
W&B runs offline by default (under `outputs/fit/wandb`, sync later with `wandb sync`); set
WANDB_MODE=online when logged in. CSV logs go beside them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from data.buffer import BufferError
from sadt.cli import one_line
from sadt.head_io import SIDECAR
from trainers.data import BufferDataModule
from trainers.module import FlowHeadModule
from trainers.options import moved_option_hint


class FitParser(LightningArgumentParser):
    """A bad option or value is one line on stderr and exit status 2; `--help` still prints the options."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a nested parse: the caller handles the error
            return super().error(message, ex)
        print(f"error: {one_line(moved_option_hint(message))}", file=sys.stderr)
        raise SystemExit(2)


class FitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this Lightning checkpoint")


def main(args: list[str] | None = None) -> FlowHeadModule:
    os.environ.setdefault("WANDB_MODE", "offline")
    cli = FitCLI(
        FlowHeadModule, BufferDataModule, run=False, args=args, save_config_kwargs={"overwrite": True},
        seed_everything_default=0, parser_class=FitParser,
    )
    save_to, resuming = Path(cli.model.hparams.save_to), cli.config.ckpt_path is not None
    if (save_to / SIDECAR).exists() and not (cli.model.hparams.overwrite or resuming):  # a shipped head stays
        raise FileExistsError(f"model.save_to {save_to} already holds a head; choose another folder or pass "
                              f"--model.overwrite true to replace it")
    if cli.trainer.max_epochs == 0:  # Lightning would train nothing and save nothing, silently
        raise ValueError("trainer.max_epochs must be >= 1 (or -1 for no limit), got 0")
    # Bad data fails here, before the run's log directory exists: a missing or foreign buffer (headers), an empty
    # one, then data the model cannot train on (a text-task buffer, forward KL without draws from p).
    cli.datamodule.check()
    cli.datamodule.setup("fit")
    cli.model.attach(cli.datamodule)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    return cli.model


def run(args: list[str] | None = None) -> int:
    """`main` for the command line: bad input (a missing or foreign buffer, an out-of-range setting) is one
    line on stderr and exit status 2, not a traceback."""
    try:
        main(args)
    except (BufferError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
