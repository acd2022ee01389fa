"""Can a head fit the windows it trains on? Issue 36's learning-curve question, asked of one window at a time.

    python -m benchmarks.head_capacity --config benchmarks/configs/head_capacity_numbers.yaml

A rounds run (`trainers.rounds`) leaves each training window's draws of p and of every round's P_F in HDF5
buffers. For each of a few training windows, this fits the rounds' head on that window's draws alone for many
epochs (no validation, no early stop: as close as the head's function class lets it come to that window's π*),
then draws `draws` fresh i.i.d. draws of the fitted P_F, of the head it started from and of p on the same
window, and reports each proposal's ESS/N and ESS_q/ESS_p (equal draws are equal LM tokens: a head adds no LM
forward). A fitted head far above its start says the head can represent a much better proposal than the rounds
find, and the rounds are short of data or of a signal that generalises; a fitted head level with its start says
the head's inputs or size are the limit. With `extra_draws`, each window also gets that many more draws of p and of
the start head's P_F to fit on: the same question with more data per window.

Writes `<output_dir>/capacity.csv` (a row per window and proposal) and `capacity.md`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.evaluation.tables import write_csv
from sadt.cli import CommandParser, run_command
from sadt.config import load_config
from sadt.importance import effective_sample_size, psis_khat


@dataclass(frozen=True)
class CapacityConfig:
    rounds_config: str  # the trainers.rounds config whose run's buffers and fit options are used
    output_dir: str  # capacity.csv and capacity.md
    work_dir: str = "outputs/head_capacity"  # each window's draws and fitted head (not results: git-ignored)
    windows: int = 3  # how many training windows, in the harvest's order
    epochs: int = 30
    draws: int = 128  # fresh i.i.d. draws per proposal and window
    seed: int = 7  # the fresh draws' seed: not the harvest's
    extra_draws: int = 0  # per window, this many more draws of p and of the start head's P_F to fit on (seed + 1)
    fit_overrides: list[str] = field(default_factory=list)  # appended to the rounds' fit options


def training_keys(buffer: Path, n: int) -> list[str]:
    from data.buffer import read_buffer

    return read_buffer(buffer).prompt_keys()[:n]


def single_window_buffers(buffers: list[Path], key: str, out_dir: Path) -> list[Path]:
    """Each buffer's draws of the window `key` alone, as a buffer of its own."""
    from data.buffer_select import prompts_draws

    out = []
    for i, path in enumerate(buffers):
        target = out_dir / f"{i}_{path.parent.name}_{path.stem}.h5"
        if not target.exists():
            prompts_draws(path, target, [key])
        out.append(target)
    return out


def extra_window_draws(lm, forecast, task, harvest, head, n: int, seed: int, like: Path) -> list[Path]:
    """`n` more draws of p and `n` of the head's P_F on one window, each a buffer beside `like` (one of the rounds'
    buffers of this window: its settings) with their log q."""
    import dataclasses

    from data.buffer import BufferWriter, read_buffer
    from sadt.lm.base_model import lm_fingerprint
    from search.harvest import Exploration, policy_record, prior_record

    search = dataclasses.replace(harvest.search, n_samples=n, batch_size=min(n, 64), seed=seed, progress=False)
    value, untempered = forecast.value(head, search.lam), Exploration(tempered_share=0)
    records = {"extra_prior.h5": lambda: prior_record(lm, forecast, task, search),
               "extra_policy.h5": lambda: policy_record(lm, forecast, task.key, task.index, search, value, untempered)}
    meta = read_buffer(like).meta
    paths = []
    for name, draw in records.items():
        path = like.parent / name
        if not path.exists():
            with BufferWriter(path, lm_fingerprint(), meta) as writer:
                writer.append(draw())
        paths.append(path)
    return paths


def run(config: CapacityConfig) -> list[dict]:
    from sadt.codec import Codec
    from sadt.config import to_dict
    from sadt.head_io import load_search_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.forecast_task import ForecastTask
    from search.harvest import task_context, task_set
    from trainers import fit
    from trainers.rounds import RoundsConfig, policy_log_weights, prior_buffer

    rounds = load_config(config.rounds_config, RoundsConfig)
    run_dir, out = Path(rounds.output_dir), Path(config.output_dir)
    done = [int(p.name.split("_")[1]) for p in run_dir.glob("round_*") if (p / "head" / "head.json").is_file()]
    if not done:
        raise ValueError(f"{run_dir}: no finished round; run `python -m trainers.rounds --config "
                         f"{config.rounds_config}` first")
    last = max(done)
    buffers = [prior_buffer(rounds)] + [run_dir / f"round_{r}" / "draws.h5" for r in range(1, last + 1)]
    start_head = str(run_dir / f"round_{last}" / "head")
    harvest = rounds.harvest_config(start_head, "unused.h5")
    lam = harvest.search.lam
    tasks = {t.key: t for t in task_set(harvest)}
    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer, harvest.codec)

    def load(head_dir):
        return load_search_head(str(head_dir), lm_fingerprint(), to_dict(codec.config))

    start = load(start_head)
    rows = []
    for key in training_keys(buffers[0], config.windows):
        window_dir = Path(config.work_dir) / key.replace("/", "_")
        fitted = window_dir / "head"
        task = ForecastTask.build(codec, task_context(tasks[key], harvest), harvest.horizon, harvest.reward)
        window_buffers = single_window_buffers(buffers, key, window_dir)
        if config.extra_draws:
            window_buffers += extra_window_draws(lm, task, tasks[key], harvest, start, config.extra_draws,
                                                 config.seed + 1, window_buffers[0])
        data = ",".join(map(str, window_buffers))
        if not (fitted / "head.json").is_file():
            fit.main([*rounds.fit, "--data.buffers", f"[{data}]", "--model.lam", str(lam), "--data.val_fraction", "0",
                      "--model.keep_best", "false", "--trainer.max_epochs", str(config.epochs),
                      "--model.init_from", start_head, "--model.save_to", str(fitted), "--model.overwrite", "true",
                      "--trainer.default_root_dir", str(window_dir / "fit"), *config.fit_overrides])
        proposals = {"p": None, f"round {last} head": start, "fitted on this window": load(fitted)}
        log_ws = {name: policy_log_weights(lm, task, head, lam, config.draws, config.seed, batch_size=64)
                  for name, head in proposals.items()}
        ess_p = effective_sample_size(log_ws["p"]) / config.draws
        for name, log_w in log_ws.items():
            ess = effective_sample_size(log_w) / config.draws
            rows.append({"window": key, "proposal": name, "draws": config.draws, "var_log_w": float(np.var(log_w)),
                         "ess_per_draw": ess, "khat": psis_khat(log_w), "ess_vs_p": ess / ess_p})
        write_csv(out / "capacity.csv", rows)
    write_table(rows, out / "capacity.md", " ".join(sys.argv))
    return rows


def write_table(rows: list[dict], path: Path, command: str) -> None:
    lines = [f"# Can the head fit one window? (`{command}`)", "",
             "| window | proposal | Var(log w) | ESS / N | PSIS k̂ | ESS_q / ESS_p |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['window']} | {r['proposal']} | {r['var_log_w']:.1f} | {r['ess_per_draw']:.3f} | {r['khat']:.2f} | "
              f"{r['ess_vs_p']:.2f}× |" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    config = load_config(parser.parse_args(argv).config, CapacityConfig)
    run(config)
    print(Path(config.output_dir, "capacity.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
