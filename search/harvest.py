"""Harvest search trajectories into an HDF5 buffer: `python -m search.harvest --config configs/harvest/default.yaml`.

The task set is every (series, context window, seed): windows slide over each series' history,
never its LLMTime test horizon, so the held-out part stays unseen by training; `generated: N` adds
N synthetic contexts (`data.generator`, seed `generator_seed`), each its own prompt. Each task runs
the configured tree search and appends, as one committed prompt, every root-to-terminal path of
the tree (source `tree_path`, with per-step prior log-probs, tree values and visits) and the
samples drawn from the finished tree (source `tree_sample`). With `sampler: prior` there is no
tree: each task stores `search.n_samples` ancestral draws from p(x|c) (source `prior_sample`), the
on-prior data that lets a fit see where p goes, not only where the search went, and weigh it by
exp(λ r) (the importance-weighted cross-entropy of `trainers.module`). With `sampler: policy` each task
stores `search.n_samples` draws from the flow head `head`'s P_F ∝ p exp(λ Q_φ), explored as GFlowNets are
trained (`Exploration`: tempered batches, a share from p), each with its exact log q (source `policy_sample`):
the on-policy data of issue 36's rounds. A tree search that reads a head (the hybrid, `search.hybrid`) takes it
from `head` too: the aggregated on-policy trees of Q♯-style rounds. Rewards are stored raw (total, task and
spectral parts): λ is applied at training time.

Resumable: tasks already committed in the output file are skipped. Scale-out: `--shard i/n`
(or torchrun's RANK / WORLD_SIZE) takes every n-th task starting at i and writes its own file;
`python -m data.buffer_cli merge OUT SHARDS...` joins the shards without copying.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data.buffer import SOURCES, BufferWriter, PromptRecord, check_resumable
from data.generator import generate_one
from data.series import load_builtin
from sadt.cli import CommandParser, run_command
from sadt.codec import Codec, CodecConfig
from sadt.config import ConfigError, check_finite, load_config, to_dict
from sadt.head_io import load_value_head, warn_if_other_lam
from sadt.rewards import RewardConfig
from search.ancestral import sample_policy
from search.config import SearchConfig, search_config
from search.forecast_task import ForecastTask

SAMPLERS = ("tree", "prior", "policy")


@dataclass(frozen=True)
class Exploration:
    """How `sampler: policy` explores around P_F (Hu et al., ICLR 2024): each batch is tempered with probability
    `tempered_share`, at a temperature T drawn uniformly from [`temperature_low`, `temperature_high`] (log q ∝
    log p / T + λ Q_φ), and a share `prior_share` of batches is drawn from p (tempered alike) instead."""

    tempered_share: float = 2 / 3
    temperature_low: float = 0.5
    temperature_high: float = 2.0
    prior_share: float = 0.0

    def __post_init__(self) -> None:
        check_finite(self, "exploration")
        for name in ("tempered_share", "prior_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"exploration `{name}` must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.temperature_low <= self.temperature_high:
            raise ValueError(f"exploration needs 0 < temperature_low <= temperature_high, got "
                             f"{self.temperature_low}, {self.temperature_high}")

    def batch_policy(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(temperature, from p) of the next batch."""
        from_prior = bool(rng.random() < self.prior_share)
        tempered = rng.random() < self.tempered_share
        return (float(rng.uniform(self.temperature_low, self.temperature_high)) if tempered else 1.0), from_prior


@dataclass(frozen=True)
class HarvestConfig:
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Wine", "Wooly"])
    context_length: int = 48  # steps of context per window
    horizon: int = 12  # steps forecast per window
    windows_per_series: int = 2  # windows, evenly spaced over each series' history (test part excluded)
    generated: int = 0  # synthetic contexts (data.generator) after the series' windows
    generator_seed: int = 0  # the generator's seed: context i is the same whatever `generated` is
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str = "data/buffers/harvest.h5"  # shard i/n writes `<stem>.shard<i>of<n>.h5`
    device: str = "cpu"
    dtype: str = "float32"
    sampler: str = "tree"  # "tree": MaxEnt-TS paths and samples; "prior": `search.n_samples` draws from p, no tree;
    # "policy": `search.n_samples` draws from the head's P_F, explored (`exploration`)
    head: str | None = None  # the flow head `sampler: policy` draws from, or a `sampler: tree` search reads
    exploration: Exploration = field(default_factory=lambda: Exploration())
    wandb: bool = False  # log per-prompt reward statistics to W&B (offline unless logged in)
    codec: CodecConfig = field(default_factory=CodecConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    search: SearchConfig = field(default_factory=lambda: search_config(n_rollouts=32, batch_size=16, n_samples=16))

    def __post_init__(self) -> None:
        if self.context_length < 8 or self.horizon < 4:
            raise ValueError(f"need context_length >= 8 and horizon >= 4, got {self.context_length}, {self.horizon}")
        if self.windows_per_series < 1 or not self.seeds:
            raise ValueError("need windows_per_series >= 1 and at least one seed")
        if self.generated < 0:
            raise ValueError(f"harvest `generated` must be >= 0, got {self.generated}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"harvest `sampler` must be one of {SAMPLERS}, got {self.sampler!r}")
        reads_head = self.sampler == "policy" or (self.sampler == "tree" and self.search.needs_head)
        if reads_head != (self.head is not None):
            raise ValueError("harvest `head` is read by, and only by, `sampler: policy` and a `sampler: tree` "
                             f"search that reads one (the hybrid): set both or neither (sampler {self.sampler!r}, "
                             f"head {self.head!r}, search method {self.search.method!r})")
        if self.sampler == "tree" and self.search.method in ("smc", "twisted_smc"):
            raise ValueError(f"harvest `sampler: tree` stores a search tree; method {self.search.method!r} grows "
                             "none (use a tree method, e.g. maxent_ts)")


@dataclass(frozen=True)
class Task:
    index: int  # global position in the task set (stable across shards)
    series: str
    end: int  # the window's context ends here; its horizon is [end, end + horizon)
    seed: int

    @property
    def key(self) -> str:
        return f"series={self.series}/end={self.end}/seed={self.seed}"


def task_set(config: HarvestConfig) -> list[Task]:
    """All (series, window, seed) tasks in a fixed order."""
    tasks = []
    for name in config.series:
        history = load_builtin(name).context  # never the LLMTime test horizon
        first, last = config.context_length, history.size - config.horizon
        if last < first:
            raise ValueError(f"{name}: history of {history.size} steps is too short for the windows")
        if config.windows_per_series > last - first + 1:  # more windows than distinct ends: some twice
            raise ValueError(f"windows_per_series = {config.windows_per_series}, but {name}'s history of "
                             f"{history.size} steps has only {last - first + 1} distinct windows of context_length "
                             f"{config.context_length} and horizon {config.horizon}; use at most that many")
        for end in np.linspace(first, last, config.windows_per_series).round().astype(int):
            tasks.extend(Task(0, name, int(end), seed) for seed in config.seeds)
    for i in range(config.generated):
        tasks.extend(Task(0, f"{GENERATED_PREFIX}{config.generator_seed}-{i}", config.context_length, seed)
                     for seed in config.seeds)
    return [dataclasses.replace(t, index=i) for i, t in enumerate(tasks)]


def between_windows(name: str, context_length: int, horizon: int, harvest_windows: int,
                    n: int) -> list[tuple[str, np.ndarray]]:
    """(label, context) of up to `n` windows of `name`'s history whose contexts end halfway between two of a
    harvest's `harvest_windows` window ends (`task_set` spaces them evenly): validation windows of the same
    series that no training window and no test step overlaps the end of."""
    history = load_builtin(name).context
    first, last = context_length, history.size - horizon
    if last < first or harvest_windows < 2:
        raise ValueError(f"{name}: no window between {harvest_windows} harvest windows of a {history.size}-step "
                         f"history (context_length {context_length}, horizon {horizon})")
    midpoints = np.linspace(first, last, 2 * harvest_windows - 1)[1::2].round().astype(int)
    chosen = np.linspace(0, len(midpoints) - 1, min(n, len(midpoints))).round().astype(int)
    return [(f"{name}@{end}", history[end - context_length : end]) for end in midpoints[chosen]]


GENERATED_PREFIX = "gen"  # a task whose series is "gen<seed>-<index>" reads data.generator's series


def task_context(task: Task, config: HarvestConfig) -> np.ndarray:
    """The context window of a task: a built-in series' history, or a generated series."""
    if task.series.startswith(GENERATED_PREFIX):
        seed, index = (int(x) for x in task.series[len(GENERATED_PREFIX):].split("-"))
        return generate_one(seed, index, config.context_length).values
    history = load_builtin(task.series).context
    return history[task.end - config.context_length : task.end]


def parse_shard(text: str | None) -> tuple[int, int]:
    """`"i/n"`, else torchrun's RANK/WORLD_SIZE, else `(0, 1)`."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_path(output: str, shard: tuple[int, int]) -> Path:
    path = Path(output)
    i, n = shard
    return path if n == 1 else path.with_name(f"{path.stem}.shard{i}of{n}{path.suffix}")


def harvest_task(lm, codec: Codec, task: Task, config: HarvestConfig, head=None) -> PromptRecord:
    """Search one task (or, with `sampler: prior`, draw from p; with `sampler: policy`, from the head's P_F) and
    turn the result into a prompt record."""
    forecast = ForecastTask.build(codec, task_context(task, config), config.horizon, config.reward)
    search_config = dataclasses.replace(config.search, seed=task.seed * 100_003 + task.index, progress=False)
    if config.sampler == "prior":
        return prior_record(lm, forecast, task, search_config)
    if config.sampler == "policy":
        return policy_record(lm, forecast, task.key, task.index, search_config, forecast.value(head, config.search.lam),
                             config.exploration)
    result = forecast.search(lm, search_config, head)

    def rewards(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = forecast.reward(*forecast.decode(sequences))
        return parts.total, parts.task, parts.spectral

    return tree_record(result, task.key, task.index, forecast.prompt_ids, rewards)


def tree_record(result, key: str, task_index: int, prompt_ids, rewards) -> PromptRecord:
    """One search's tree as a prompt record, for any task (forecast or text): every root-to-terminal path
    (source `tree_path`) and the samples drawn from the finished tree (`tree_sample`), with per-step prior
    log-probs, tree values and visits. `rewards(sequences)` gives (total, task part or None, spectral part
    or None) for those action sequences, paths first."""
    if result.interrupted:
        raise KeyboardInterrupt
    paths = result.tree.trajectories()
    samples = result.tree.trajectories(result.sample_nodes)
    total, task, spectral = rewards([s.tolist() for s in paths.split("actions") + samples.split("actions")])
    source = np.concatenate([np.full(paths.lengths.size, SOURCES["tree_path"]),
                             np.full(samples.lengths.size, SOURCES["tree_sample"])])
    return PromptRecord(
        key=key, task_index=task_index, prompt_tokens=np.asarray(prompt_ids),
        lengths=np.concatenate([paths.lengths, samples.lengths]),
        actions=np.concatenate([paths.actions, samples.actions]),
        log_prior=np.concatenate([paths.log_prior, samples.log_prior]),
        values=np.concatenate([paths.values, samples.values]),
        visits=np.concatenate([paths.visits, samples.visits]),
        reward=total, reward_task=task, reward_spectral=spectral, source=source, root_value=result.root_value,
    )


def policy_record(lm, forecast: ForecastTask, key: str, task_index: int, search: SearchConfig, value,
                  exploration: Exploration) -> PromptRecord:
    """`search.n_samples` draws from P_F ∝ p exp(λ Q_φ) (`value`, bound to the task), batch by batch under
    `exploration`'s temperatures and share from p, each stored with log q(x) under the policy that drew it."""
    rng = np.random.default_rng([search.seed, 36])
    actions, log_q, step_log_prior = [], [], []
    for batch, start in enumerate(range(0, search.n_samples, search.batch_size)):
        size = min(search.batch_size, search.n_samples - start)
        temperature, from_prior = exploration.batch_policy(rng)
        draws = sample_policy(lm, forecast, n_samples=size, batch_size=size, temperature=temperature,
                              top_k=search.top_k, value_head=None if from_prior else value,
                              guide_lam=0.0 if from_prior else search.lam, seed=search.seed + batch, progress=False)
        actions += draws.actions
        log_q.append(draws.log_proposal)
        step_log_prior += draws.step_log_prior
    parts = forecast.reward(*forecast.decode(actions))
    return PromptRecord(
        key=key, task_index=task_index, prompt_tokens=np.asarray(forecast.prompt_ids),
        lengths=np.array([len(a) for a in actions]), actions=np.concatenate(actions),
        log_prior=np.concatenate(step_log_prior), reward=parts.total, reward_task=parts.task,
        reward_spectral=parts.spectral, source=np.full(len(actions), SOURCES["policy_sample"]),
        log_q=np.concatenate(log_q),
    )


def prior_record(lm, forecast: ForecastTask, task: Task, search: SearchConfig) -> PromptRecord:
    """`search.n_samples` ancestral draws from p(x|c); no tree, so no per-step values or visits."""
    draws = sample_policy(lm, forecast, n_samples=search.n_samples, batch_size=search.batch_size,
                          top_k=search.top_k, seed=search.seed, progress=False)
    parts = forecast.reward(*forecast.decode(draws.actions))
    return PromptRecord(
        key=task.key, task_index=task.index, prompt_tokens=np.asarray(forecast.prompt_ids),
        lengths=np.array([len(a) for a in draws.actions]), actions=np.concatenate(draws.actions),
        log_prior=np.concatenate(draws.step_log_prior), reward=parts.total, reward_task=parts.task,
        reward_spectral=parts.spectral, source=np.full(len(draws.actions), SOURCES["prior_sample"]),
    )


def buffer_meta(config: HarvestConfig, codec: Codec, shard: tuple[int, int]) -> dict:
    """The settings stored beside the buffer; a resumed harvest must repeat them."""
    return {"lam": config.search.lam, "gamma": config.reward.gamma, "config": to_dict(config),
            "action_token_ids": codec.action_token_ids, "shard": list(shard)}


def harvest(lm, codec: Codec, config: HarvestConfig, lm_fingerprint: str, shard: tuple[int, int] = (0, 1),
            log=None, head=None) -> Path:
    """Run every task of this shard not yet in the output file; returns the file's path."""
    path = shard_path(config.output, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = task_set(config)[shard[0] :: shard[1]]
    with BufferWriter(path, lm_fingerprint, buffer_meta(config, codec, shard)) as writer:
        todo = [t for t in tasks if t.key not in writer.done_keys()]
        start, n_traj = time.perf_counter(), 0
        with tqdm(todo, desc=f"harvest {path.name}", unit="prompt") as bar:
            for task in bar:
                record = harvest_task(lm, codec, task, config, head)
                writer.append(record)
                n_traj += len(record.lengths)
                bar.set_postfix(traj_per_s=f"{n_traj / (time.perf_counter() - start):.1f}")
                if log is not None:
                    log({"task": task.index, "reward_mean": float(np.mean(record.reward)),
                         "reward_max": float(np.max(record.reward)), "root_value": record.root_value,
                         "trajectories": len(record.lengths)})
    return path


def wandb_run(config: HarvestConfig):
    """A W&B run for per-prompt reward statistics, offline unless WANDB_MODE says otherwise."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(project="sadt-harvest", config=to_dict(config))


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/harvest/default.yaml"))
    parser.add_argument("--shard", help="i/n: run every n-th task from i into its own file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, HarvestConfig)
        shard = parse_shard(args.shard)
        task_set(config)  # fail on bad series/window settings before loading the model
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from sadt.lm.base_model import lm_fingerprint, load_base_lm, load_base_tokenizer

    codec, fingerprint = Codec(load_base_tokenizer(), config.codec), lm_fingerprint()
    check_resumable(shard_path(config.output, shard), fingerprint, buffer_meta(config, codec, shard))
    head = None
    if config.head is not None:
        head, card = load_value_head(config.head, fingerprint, to_dict(codec.config), config.device)
        warn_if_other_lam(card.lam, config.search.lam, f"head {config.head}")
    lm, _ = load_base_lm(dtype=config.dtype, device=config.device)  # after the cheap refusals: it takes seconds
    run = wandb_run(config) if config.wandb else None
    path = harvest(lm, codec, config, fingerprint, shard, run.log if run else None, head)
    if run is not None:
        run.finish()
    print(f"buffer: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))  # bad input found after the model loads (a held buffer, a search over memory): one line
