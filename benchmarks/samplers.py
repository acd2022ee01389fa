"""Every sampler of π* ∝ p·exp(λ r) at equal LM tokens, beside i.i.d. draws of p and of P_F.

    python -m benchmarks.samplers --config benchmarks/configs/samplers_heldout13.yaml [--resume] [--shard i/n]

Per held-out window, λ and sampler, one run to the largest budget (SMC: one run per budget; with `repeats`, that
many runs with seeds seed, seed + 1, ..., whose scores the summary averages per window) is scored at every budget of
the token grid (`benchmarks.evaluation.scoring`): log Ẑ's error against a reference from a long i.i.d. run of p with
its own seed (or, `reference: {draws: smc}`, from independent twisted-SMC runs under a head no compared sampler
reads: `benchmarks.evaluation.references`), ESS per 1000 tokens with PSIS k̂, and CRPS of resampled forecasts.
Writes `<output_dir>/rows.csv` (after every window, λ, sampler and repeat; `--resume` runs only what is missing),
`references.csv`, `summary.md` (means over windows with bootstrap 95% intervals, each sampler paired with the i.i.d.
draws of its own rollout policy) and `ess_vs_tokens.png`.

`task: caption` runs the same samplers on the caption text task (`search.caption`: one prompt per series, p
truncated to its `top_k` tokens a step for every sampler and the reference alike), with no CRPS (no truth).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.evaluation.draws import DrawSet, policy_draws, smc_draws, tree_draws
from benchmarks.evaluation.references import ReferenceSpec, smc_log_z_hats
from benchmarks.evaluation.scoring import Reference, score
from benchmarks.evaluation.store import RowStore
from benchmarks.evaluation.summary import headline, noise_floor_table, pairs_table, plot_ess, repeat_of, summary_table
from benchmarks.evaluation.windows import heldout_windows
from sadt.cli import CommandParser, run_command
from sadt.config import load_config, to_dict
from sadt.rewards import RewardConfig
from search.config import search_config
from search.forecast_task import PARAMETER_FREE_VALUES
from search.methods import METHOD_STRATEGIES

DRAWS = ("policy", "tree", "smc")
WEIGHTS = ("own", "balance")
TASKS = ("forecast", "caption")


@dataclass(frozen=True)
class SamplerSpec:
    draws: str  # "policy" (i.i.d.), "tree" (MaxEnt-TS, the hybrid, DTS) or "smc" (SMC, twisted SMC)
    head: bool = False  # reads the flow head (P_F, the hybrid, twisted SMC)
    search: dict = field(default_factory=dict)  # SearchConfig fields for tree and smc
    baseline: str | None = None  # the label of the i.i.d. sampler of this one's rollout policy (paired ratios)
    weights: str = "own"  # a tree's draws weighted by their own law, or by the balance heuristic (`search.balance`)

    def __post_init__(self) -> None:
        if self.draws not in DRAWS:
            raise ValueError(f"sampler `draws` must be one of {DRAWS}, got {self.draws!r}")
        if self.weights not in WEIGHTS or (self.weights == "balance" and self.draws != "tree"):
            raise ValueError(f"sampler `weights` must be one of {WEIGHTS} ('balance' for `draws: tree` only), got "
                             f"{self.weights!r} with draws {self.draws!r}")
        method = self.search.get("method", "maxent_ts")
        if self.draws == "tree" and not (method in METHOD_STRATEGIES and METHOD_STRATEGIES[method].records_draws):
            raise ValueError(f"sampler `search.method` {method!r} keeps no law per draw, so its draws have no "
                             f"importance weight: a `draws: tree` row takes one of "
                             f"{[m for m, s in METHOD_STRATEGIES.items() if s.records_draws]}")


@dataclass(frozen=True)
class SamplersConfig:
    output_dir: str = "benchmarks/results/samplers/heldout13"
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Sunspots", "Wine", "Wooly"])
    windows_per_series: int = 3
    context_length: int = 48
    horizon: int = 12
    lams: list[float] = field(default_factory=lambda: [15.0])
    budgets: list[float] = field(default_factory=lambda: [2500.0, 10000.0])  # LM tokens
    reference_budget: float = 60000.0  # tokens of the reference's i.i.d. p draws per window
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)  # i.i.d. p (default) or twisted-SMC runs
    head: str | None = "checkpoints/heads/soft_ahead_lam15"
    task: str = "forecast"  # "forecast": the held-out windows; "caption": the caption text task of each series
    top_k: int | None = None  # every sampler's p cut to its top k a step (a text task's tree needs one)
    max_tokens: int = 24  # caption: the longest caption in tokens
    reward: RewardConfig = field(default_factory=RewardConfig)  # forecast: the windows' reward (e.g. a sparse one)
    p_draws_from: str | None = None  # a run dir whose i.i.d. p draws (prior and reference: same windows, seed and
    # top_k) are read and rescored under this run's reward instead of drawn again (p's draws do not read r)
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    pairs: list[list[str]] = field(default_factory=list)  # [a, b] pairs of sampler labels compared in summary.md
    policy_batch: int = 64
    n_resampled: int = 48
    seed: int = 0
    smc_max_particles: int | None = None  # an SMC run that a budget gives more particles is split into independent
    # runs of equal size, pooled (`draws.pool_smc_runs`): their KV caches must fit in memory (100k tokens ≈ 2,060)
    repeats: int = 1  # runs of every sampler per window, seeds seed + 0 .. repeats − 1 (one run's ESS is noisy)
    bootstrap: int = 2000
    device: str = "cpu"  # torch device of the LM (and the head); a GPU builds long references fast
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.samplers:
            raise ValueError("samplers: name at least one sampler")
        if self.smc_max_particles is not None and self.smc_max_particles < 2:
            raise ValueError(f"samplers `smc_max_particles` must be at least 2 (or null), got {self.smc_max_particles}")
        if self.repeats < 1:
            raise ValueError(f"samplers `repeats` must be at least 1, got {self.repeats}")
        if self.task not in TASKS:
            raise ValueError(f"samplers `task` must be one of {TASKS}, got {self.task!r}")
        if self.task == "caption" and self.top_k is None:
            raise ValueError("samplers `task: caption` needs `top_k` (e.g. 20): a text tree over the whole vocabulary "
                             "would hold ~1 MB a node")
        if self.task == "caption" and self.reward != RewardConfig():
            raise ValueError("samplers `reward` sets the forecast reward; the caption task's is its own "
                             "(configs/text/caption.yaml)")
        readers = [name for name, spec in self.samplers.items() if spec.head]
        if readers and self.head is None:
            raise ValueError(f"samplers {readers} read a flow head: set `head`, or drop them (the caption task has "
                             "no shipped head)")
        if sorted(self.budgets) != list(self.budgets) or not all(b > 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive and increasing, got {self.budgets}")
        for pair in self.pairs:
            if len(pair) != 2 or any(name not in self.samplers for name in pair):
                raise ValueError(f"pairs: each pair names two samplers of `samplers`, got {pair}")
        if self.reference.draws == "smc" and readers and self.reference.head == self.head:
            raise ValueError(f"reference.head {self.reference.head!r} is the head samplers {readers} read: the "
                             "reference must come from no compared sampler, so twist it with another head")
        for name, spec in self.samplers.items():
            if spec.baseline is not None and spec.baseline not in self.samplers:
                raise ValueError(f"samplers.{name}.baseline names no sampler: {spec.baseline!r}")


def run_sampler(spec: SamplerSpec, lm, task, lam: float, budgets: list[float], seed: int, head,
                tokens_per_draw: float, prior_draws: DrawSet, policy_batch: int = 64,
                top_k: int | None = None, smc_max_particles: int | None = None) -> dict[float, DrawSet]:
    """budget -> the sampler's draws for it (one run to the largest budget, or one SMC run per budget with the
    particles the budget buys at `tokens_per_draw`, split into pooled runs above `smc_max_particles`)."""
    if spec.draws == "policy" and not spec.head:  # the prior's draws serve every λ and sampler label
        return dict.fromkeys(budgets, prior_draws.at_lam(lam))
    value = head if spec.head else None
    particles = "twisted_smc" if spec.head else "smc"
    default = particles if spec.draws == "smc" else "maxent_ts"  # `search: {method: ...}` may name another
    search = search_config(**{"method": default, "lam": lam, "seed": seed, "n_samples": 1, "top_k": top_k,
                              **spec.search})
    if spec.draws == "policy":
        return dict.fromkeys(budgets, policy_draws(lm, task, lam, budgets[-1], value_head=value,
                                                   batch_size=policy_batch, seed=seed, top_k=top_k))
    if spec.draws == "tree":
        return dict.fromkeys(budgets, tree_draws(lm, task, search, budgets[-1], value, spec.weights))
    return {b: smc_draws(lm, task, search, max(2, round(b / tokens_per_draw)), value, smc_max_particles)
            for b in budgets}


def cached(path: Path, make: Callable[..., DrawSet], *args, **kwargs) -> DrawSet:
    """The draws saved at `path`, or `make(*args, **kwargs)`'s, saved there first (λ-free draws of p, reused on resume).
    A file written before the reference budget or the seed changed is stale: remove the `draws/` folder then."""
    if path.exists():
        return DrawSet.load(path)
    draws = make(*args, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    draws.save(path.with_suffix(".partial.npz"))
    path.with_suffix(".partial.npz").replace(path)
    return draws


def p_draws(config: SamplersConfig, path: Path, lm, task, budget: float, seed: int) -> DrawSet:
    """i.i.d. draws of p to `budget` tokens (λ = 1 weights, `DrawSet.at_lam` reweighs them), cached at `path`; where
    `config.p_draws_from` holds the same file, its draws rescored under this task's reward (`rescored_p_draws`)."""
    source = None if config.p_draws_from is None else Path(config.p_draws_from) / "draws" / path.name
    if not path.exists() and source is not None and source.exists():
        reused = rescored_p_draws(DrawSet.load(source), task, budget)
        if reused is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            reused.save(path)
    return cached(path, policy_draws, lm, task, 1.0, budget, batch_size=config.policy_batch, seed=seed,
                  top_k=config.top_k)


def rescored_p_draws(draws: DrawSet, task, budget: float) -> DrawSet | None:
    """Draws of p cut to `budget` tokens with r and log w = r (λ = 1) recomputed by `task.reward_fn`: draws of p do
    not depend on the reward, so a run that changes only r reuses them. None where they hold under `budget` tokens
    (a shorter run's draws are not this run's)."""
    if draws.log_z is not None or draws.tokens.size == 0 or draws.tokens[-1] < budget:
        return None
    kept = draws.upto(budget)
    rewards = np.asarray(task.reward_fn(kept.actions), dtype=np.float64)
    return DrawSet(rewards.copy(), kept.tokens, kept.actions, rewards)


def benchmark_tasks(config: SamplersConfig, tokenizer) -> list[tuple[str, Callable[[], object], np.ndarray | None]]:
    """(label, a function building the task, the truth or None) for every window, in the order they run: window
    k of every series before window k + 1 of any, so a run stopped early still covers every series."""
    from sadt.codec import Codec
    from search.caption import caption_task
    from search.forecast_task import ForecastTask

    if config.task == "caption":
        return [(f"{name} caption", lambda name=name: caption_task(tokenizer, name, config.context_length,
                                                                   config.max_tokens), None)
                for name in config.series]
    codec = Codec(tokenizer)
    per_series = [heldout_windows(name, config.windows_per_series, config.context_length, config.horizon)
                  for name in config.series]
    return [(label, lambda context=context: ForecastTask.build(codec, context, config.horizon, config.reward), truth)
            for k in range(config.windows_per_series) for series in per_series
            for label, context, truth in series[k : k + 1]]


def reference_maker(config: SamplersConfig, out: Path, label: str, lm, task, value,
                    rng: np.random.Generator) -> Callable[[float], Reference]:
    """λ -> the window's reference made afresh (`config.reference`): from its i.i.d. p draws (drawn on the first
    call, cached for every λ) or from `runs` twisted-SMC runs guided by `value` (cached run by run, in a file named
    for λ and the particles a run, so runs of another size are never mixed in)."""
    spec = config.reference
    if spec.draws == "smc":
        def runs_file(lam: float) -> Path:
            return out / "draws" / f"{label}.reference_smc_lam{lam:g}_p{spec.particles}.npy"

        return lambda lam: Reference.from_log_weights(smc_log_z_hats(
            runs_file(lam), lm, task, lam, spec, value, config.seed, config.top_k), rng)
    prior = functools.cache(functools.partial(  # a seed no sampler uses
        p_draws, config, out / "draws" / f"{label}.reference.npz", lm, task, config.reference_budget,
        10_000 + config.seed))
    return lambda lam: Reference.from_prior_rewards(prior().rewards, lam, rng)


def window_reference(references: RowStore, label: str, lam: float, make: Callable[[float], Reference]) -> Reference:
    """The window's reference log Z at λ: read back from references.csv (the record), else `make(lam)` (drawn only
    then) and recorded there."""
    if references.done(label, lam):
        return Reference.from_row(references.row(label, lam))
    reference = make(lam)
    references.add([{"window": label, "lam": lam, **reference.__dict__}])
    return reference


def run(config: SamplersConfig, out: Path, resume: bool, shard: tuple[int, int],
        names: list[str] | None = None) -> RowStore:
    """Every window of this shard × λ × sampler (`names` of them, all by default) that rows.csv lacks."""
    from sadt.codec import Codec
    from sadt.head_io import load_value_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm

    names = list(config.samplers) if names is None else names
    lm, tokenizer = load_base_lm(dtype=config.dtype, device=config.device)

    def value(path: str):  # a trained head's path, or a parameter-free value's name as it is
        if path in PARAMETER_FREE_VALUES:
            return path
        if config.task == "forecast":  # the card's codec must be this codec
            return load_value_head(path, lm_fingerprint(), to_dict(Codec(tokenizer).config), config.device)[0]
        head, card = load_value_head(path, lm_fingerprint(), None, config.device)
        if card.training.get("task") != "text":
            raise ValueError(f"head {path}: trained on a {card.training.get('task', 'forecast')} task, not text "
                             f"(the caption task's heads are fitted with `--model.task text`)")
        return head

    head = value(config.head) if any(config.samplers[name].head for name in names) else None
    reference_value = value(config.reference.head) if config.reference.draws == "smc" else None
    rows = row_store(out, resume)
    references = RowStore(out / "references.csv", ("window", "lam"), resume)
    index, count = shard
    for label, build_task, truth in tqdm(benchmark_tasks(config, tokenizer)[index::count], desc="windows",
                                         unit="window"):
        if names and all(rows.done(label, lam, name, repeat) for lam in config.lams for name in names
                         for repeat in range(config.repeats)):
            continue
        task = build_task()
        rng = np.random.default_rng([config.seed, zlib.crc32(label.encode())])
        make_reference = reference_maker(config, out, label, lm, task, reference_value, rng)
        if not names:  # references only (`--references-only`)
            for lam in config.lams:
                window_reference(references, label, lam, make_reference)
            continue
        for repeat in range(config.repeats):
            if all(rows.done(label, lam, name, repeat) for lam in config.lams for name in names):
                continue  # no prior draws drawn for a repeat with nothing left to run
            prior_file = f"{label}.prior.npz" if repeat == 0 else f"{label}.prior.r{repeat}.npz"
            prior_draws = p_draws(config, out / "draws" / prior_file, lm, task, config.budgets[-1],
                                  config.seed + repeat)
            for lam in config.lams:
                reference = window_reference(references, label, lam, make_reference)
                for name in names:
                    if not rows.done(label, lam, name, repeat):
                        rows.add(scored_run(config, name, (label, task, truth), lam, repeat, lm, head, prior_draws,
                                            reference, rng))
    return rows


def scored_run(config: SamplersConfig, name: str, window: tuple[str, object, np.ndarray | None], lam: float,
               repeat: int, lm, head, prior_draws: DrawSet, reference: Reference,
               rng: np.random.Generator) -> list[dict]:
    """One run of sampler `name` (seed `config.seed + repeat`) on a (label, task, truth) window, scored at every
    budget: its rows for rows.csv."""
    label, task, truth = window
    tokens_per_draw = float(prior_draws.tokens[-1] / prior_draws.tokens.size)
    start = time.perf_counter()
    runs = run_sampler(config.samplers[name], lm, task, lam, config.budgets, config.seed + repeat, head,
                       tokens_per_draw, prior_draws, config.policy_batch, config.top_k, config.smc_max_particles)
    wall = time.perf_counter() - start
    scored = [{"window": label, "lam": lam, "sampler": name, "repeat": repeat,
               **score(draws, budget, reference, task, truth, rng, config.n_resampled), "wall_s": wall}
              for budget, draws in runs.items()]
    last = scored[-1]
    tqdm.write(f"{label:16s} λ={lam:g} {name:22s} #{repeat} ESS {last['ess']:6.1f}  k̂ {last['khat']:5.2f}  "
               f"log Z err {last['log_z_error']:+.2f}  ({wall:.0f} s)")
    return scored


def row_store(out: Path, resume: bool) -> RowStore:
    """rows.csv, one row per window, λ, sampler, repeat and budget (rows written before `repeats` existed are
    repeat 0)."""
    return RowStore(out / "rows.csv", ("window", "lam", "sampler", "repeat"), resume, defaults={"repeat": 0})


def copy_first_runs(config: SamplersConfig, source: Path, out: Path) -> int:
    """`source`'s rows of this config's samplers, λs and budgets become repeat 0 here (their log Z errors rescored
    against this run's references.csv), and its cached prior draws this run's repeat-0 draws: a run with the same
    seed already done elsewhere is not drawn again (prior draws cut to this run's largest budget). A run's repeat 0
    already here is kept, so a sampler added to the config later is copied without doubling the others' rows.
    Returns the rows copied."""
    if not (out / "references.csv").is_file():
        raise ValueError(f"{out}/references.csv: copy the reference first, so the copied rows can be rescored")
    references = RowStore(out / "references.csv", ("window", "lam"), resume=True).rows
    rows = row_store(out, resume=True)
    wanted = [r for r in row_store(source, resume=True).rows if repeat_of(r) == 0
              and r["sampler"] in config.samplers and float(r["lam"]) in config.lams
              and float(r["budget"]) in config.budgets and not rows.done(r["window"], r["lam"], r["sampler"], 0)]
    rows.add(rescored(wanted, references))
    (out / "draws").mkdir(parents=True, exist_ok=True)
    for prior in (source / "draws").glob("*.prior.npz"):
        draws = DrawSet.load(prior)
        if draws.tokens[-1] >= config.budgets[-1]:  # i.i.d. draws: a prefix of a longer run is a run
            draws.upto(config.budgets[-1]).save(out / "draws" / prior.name)
    return len(wanted)


def noise_floor(rows: list[dict], config: SamplersConfig) -> str:
    """summary.md's last section where samplers ran more than once a window: each against itself."""
    if not any(repeat_of(r) == 1 for r in rows):
        return ""
    return ("\n## A sampler against itself: its second run over its first (what one run a window can resolve)\n\n"
            + noise_floor_table(rows, config.bootstrap) + "\n")


def rescored(rows: list[dict], references: list[dict]) -> list[dict]:
    """The rows scored against other references (a longer run of p built later, e.g. on a GPU, without rerunning a
    sampler): log Z error = log Ẑ − log Z_ref of the reference with the row's window and λ. Rows whose window and λ
    the references lack are left out, so no summary mixes errors against two references."""
    log_z = {(r["window"], float(r["lam"])): float(r["log_z"]) for r in references}
    return [{**row, "log_z_error": float(row["log_z"]) - log_z[row["window"], float(row["lam"])]}
            for row in rows if (row["window"], float(row["lam"])) in log_z]


def part_to_run(config: SamplersConfig, lams: list[float] | None, samplers: list[str] | None, source: Path,
                error: Callable[[str], None]) -> tuple[SamplersConfig, list[str]]:
    """The config's λ and the sampler labels named on the command line (a long run split across sessions; all
    when not named); the summary still reads every row. A name the config lacks is an `error`."""
    if lams:
        if not set(lams) <= set(config.lams):
            error(f"--lams {lams} must be among the config's lams {config.lams} ({source})")
        config = replace(config, lams=lams)
    unknown = sorted(set(samplers or ()) - set(config.samplers))
    if unknown:
        error(f"--samplers {unknown} are not among the config's samplers {list(config.samplers)} ({source})")
    return config, list(samplers or config.samplers)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="keep rows.csv and run only what it lacks")
    parser.add_argument("--shard", default="0/1", help="i/n: this process takes windows i, i+n, ... (resumable)")
    parser.add_argument("--summarise", action="store_true", help="rebuild summary.md and the plot from rows.csv")
    parser.add_argument("--lams", type=float, nargs="+", help="run only these of the config's λ (a long run split "
                        "across sessions); the summary reads every row")
    parser.add_argument("--samplers", nargs="+", help="run only these of the config's samplers (by label)")
    parser.add_argument("--references-only", action="store_true",
                        help="build only each window's reference draws and references.csv (e.g. on a GPU), no sampler")
    parser.add_argument("--first-run-from", type=Path, metavar="DIR",
                        help="copy DIR's rows and prior draws of this config's samplers as repeat 0 (a run with the "
                        "same seed done there), then stop")
    parser.add_argument("--reference-from", type=Path, metavar="DIR",
                        help="with --summarise: score the rows against DIR/references.csv (a longer reference built "
                        "later) and write summary_vs_<DIR's name>.md and its plot beside the rows")
    args = parser.parse_args(argv)
    if args.reference_from is not None and not (args.reference_from / "references.csv").is_file():
        parser.error(f"--reference-from {args.reference_from}: no references.csv there")
    if args.reference_from is not None and not args.summarise:
        parser.error("--reference-from rescores finished rows: use it with --summarise")
    try:
        index, count = (int(x) for x in args.shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        parser.error(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}")
    if count > 1:  # n shards side by side share the cores: more torch threads each only thrash
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
    config = load_config(args.config, SamplersConfig)
    to_run, names = part_to_run(config, args.lams, args.samplers, args.config, parser.error)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.first_run_from is not None:
        print(f"{copy_first_runs(config, args.first_run_from, out)} rows copied from {args.first_run_from}")
        return 0
    if args.references_only:
        run(to_run, out, args.resume, (index, count), names=[])
        return 0
    if args.summarise:
        rows = row_store(out, resume=True).rows
    else:
        rows = run(to_run, out, args.resume, (index, count), names).rows
    header = f"# Samplers at equal LM tokens ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)\n"
    if args.reference_from is not None:
        references = RowStore(args.reference_from / "references.csv", ("window", "lam"), resume=True).rows
        rows, suffix = rescored(rows, references), f"_vs_{args.reference_from.name}"
        header += (f"\nLog Z errors against {args.reference_from}/references.csv "
                   f"({len({r['window'] for r in rows})} windows have one).\n")
    else:
        suffix = ""
    baselines = {name: spec.baseline for name, spec in config.samplers.items()}
    heads = {name: spec.head for name, spec in config.samplers.items()}
    (out / f"summary{suffix}.md").write_text(
        header + "\n" + summary_table(rows, baselines, config.bootstrap) + "\n\n## The best sampler with a head "
        "against the best without (paired over windows; best: lowest mean |log Z error|)\n\n" +
        headline(rows, heads, config.bootstrap) + "\n\n## Chosen pairs\n\n" +
        pairs_table(rows, [tuple(pair) for pair in config.pairs], config.bootstrap) + "\n" + noise_floor(rows, config))
    plot_ess(rows, out / f"ess_vs_tokens{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
