"""The forecasting job: held-out series, one row per method, a table and plots.

    python -m search.run --config configs/search/airpassengers.yaml
    python -m search.demo                      # the same job on configs/demo/airpassengers.yaml

For each series (LLMTime protocol: the last 20% held out; with `horizon: N`, N steps past the end,
unscored) and each method in `methods` it draws `n_samples` forecasts: `base` samples the
grammar-restricted prior in batches; `auto_arima` is the peer a user would pick instead (pmdarima's
AutoARIMA on the same context, `search.peers`); `hybrid` is MaxEnt-TS with the flow head `head` (the
recommended recipe: `search` with `hybrid: visits`); the tree methods (`maxent_ts`, `dts`, `dts_star`,
`mcts_uct`, `ancestral`, `best_of_n`, `greedy`, `flow`) and the particle samplers (`smc`,
`twisted_smc`) run with the `search` settings (its `method` replaced). A row may also name an entry
of `variants`: `search` with that entry's overrides, e.g.

    methods: [base, maxent_ts, hybrid, hybrid_tree]
    variants:
      hybrid_tree: {hybrid: visits, sampling: tree}

It reports CRPS, scaled MAE, Spec-W1 (against the truth's PSD), the mean reward of the samples,
NFE (LM token positions), forward calls, wall time and peak memory, with LLMTime's published
numbers beside ours.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from data.series import Series, load_builtin, load_csv
from sadt.cli import CommandParser, one_line
from sadt.codec import Codec, CodecConfig
from sadt.config import ConfigError, check_finite, from_dict, load_config, to_dict
from sadt.head_io import HeadMismatchError, SearchHead, load_search_head
from sadt.lm.base_model import BACKENDS, check_torch_settings, lm_fingerprint, load_base_lm
from sadt.rewards import RewardConfig
from sadt.spectral import MIN_HORIZON
from search.ancestral import sample_prior
from search.config import CONFIG_OF, RECOMMENDED_HEAD, MaxEntTSConfig, SearchConfig, SearchResult, carried
from search.config import METHODS as TREE_METHODS
from search.forecast_task import ForecastTask
from search.peers import auto_arima_samples, seasonal_period
from search.report import ResultsFile, check_output_dir, draw_plots, print_table, scores
from search.sampler import check_resources
from search.smc import SMC_METHODS

PEER = "auto_arima"  # AutoARIMA fitted on the same context (search.peers): what a user would pick instead
HYBRID = "hybrid"  # maxent_ts reading the flow head `head` (hybrid: visits), the recommended sampler
METHODS = ("base", PEER, HYBRID, *TREE_METHODS, *SMC_METHODS)  # `base`: plain batched sampling without a tree


@dataclass(frozen=True)
class RunConfig:
    series: list[str] = field(default_factory=lambda: ["AirPassengers"])  # built-in names
    methods: list[str] = field(default_factory=lambda: ["base", "maxent_ts"])  # rows: METHODS or variant names
    variants: dict[str, dict] = field(default_factory=dict)  # named rows: overrides of `search` (e.g. a hybrid@200)
    head: str | None = RECOMMENDED_HEAD  # flow-head checkpoint directory (hybrid, flow, twisted_smc), loaded
    # only when a row reads it and checked against the LM
    csv: str | None = None  # a user's CSV file instead of the built-in series
    column: str = "value"  # the CSV column to forecast
    horizon: int | None = None  # forecast this many steps past each series' end (no truth: no scores);
    # null back-tests the last 20% (LLMTime's protocol)
    n_samples: int = 20  # forecasts per series and method
    batch_size: int = 20  # rollouts per LM batch for `base`
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "torch"  # "torch" or "mlx" (the `mlx` extra): the same search on mlx-lm
    output_dir: str = "outputs/demo"
    codec: CodecConfig = field(default_factory=CodecConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    search: SearchConfig = field(default_factory=MaxEntTSConfig)  # tree settings (method, n_samples set per row)

    def __post_init__(self) -> None:
        # Every field is checked here, before the model loads: a bad value is one line, never a traceback later.
        check_finite(self, "run")
        if self.n_samples < 1:
            raise ValueError(f"`n_samples` must be >= 1, got {self.n_samples}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.horizon is not None and self.horizon < MIN_HORIZON:
            raise ValueError(f"`horizon` must be >= {MIN_HORIZON} steps past the end (the spectral reward's "
                             f"shortest), or null to back-test, got {self.horizon}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"`top_k` must be >= 1 (or null for the whole digit set), got {self.top_k}")
        if self.seed < 0:
            raise ValueError(f"`seed` must be >= 0, got {self.seed}")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        clash = sorted(set(self.variants) & set(METHODS) - {HYBRID})
        if clash:
            raise ValueError(f"`variants` names must differ from the methods {METHODS}, got {clash}")
        unknown = sorted(set(self.methods) - set(METHODS) - set(self.variants))
        if unknown or not self.methods:
            raise ValueError(
                f"`methods` must be a non-empty list of {METHODS} or `variants` names {sorted(self.variants)}, "
                f"got {self.methods}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "torch":
            check_torch_settings(self.dtype, self.device)
        for name in self.variants:  # a bad variant fails here, named, even when no row uses it
            self.search_config(name)
        needing = self.rows_reading_head
        if needing and self.head is None:
            raise ValueError(f"methods {needing} read a flow head: set `head` to a checkpoint directory")

    @property
    def rows_reading_head(self) -> list[str]:
        """The rows whose search reads the flow head (hybrid, flow, twisted_smc, or a variant of them)."""
        return [name for name in self.methods if name not in ("base", PEER) and self.search_config(name).needs_head]

    def search_config(self, name: str) -> SearchConfig:
        """The search settings of row `name`: `search` carried to the row's method (`hybrid`: maxent_ts reading
        the head), then a variant's overrides (a variant may name its own `method`)."""
        config = dataclasses.replace(self.search, n_samples=self.n_samples, seed=self.seed)
        if name == HYBRID:
            config = config.for_method("maxent_ts", hybrid="visits")
        elif name in CONFIG_OF:
            config = config.for_method(name)
        if name not in self.variants:
            return config
        overrides = self.variants[name]
        method = overrides.get("method", config.method)
        shared = carried(config, method) if method in CONFIG_OF else {}  # an unknown method: from_dict names it
        return from_dict({**shared, "method": method, **overrides}, SearchConfig, source="", prefix=f"variants.{name}.")


@dataclass
class MethodDraws:
    sequences: list[list[int]]  # n_samples action sequences
    rewards: np.ndarray  # (n_samples,)
    rollouts: int | None = None  # rollouts actually run (tree searches), None for base sampling and SMC
    interrupted: bool = False  # Ctrl-C stopped the search early: its samples come from a smaller tree
    forecasts: np.ndarray | None = None  # (n_samples, H) in series units, for a peer that writes no tokens


def peer_draws(task: ForecastTask, series: Series, config: RunConfig) -> MethodDraws:
    """AutoARIMA's forecasts on the same context, scored by the same reward (no LM work)."""
    forecasts = auto_arima_samples(series.context, series.horizon, config.n_samples,
                                   seasonal_period(series.context), config.seed)
    scaled = task.scaler.transform(forecasts)
    rewards = task.reward(scaled, np.ones(len(scaled), dtype=bool)).total
    return MethodDraws([], rewards, forecasts=forecasts)


def sample_method(
    lm, task: ForecastTask, method: str, config: RunConfig, head: SearchHead | None = None
) -> MethodDraws:
    """`n_samples` action sequences of one method (or variant) and their rewards."""
    if method == "base":
        actions, _ = sample_prior(
            lm, task, n_samples=config.n_samples, batch_size=config.batch_size,
            temperature=config.temperature, top_k=config.top_k, seed=config.seed,
        )
        return MethodDraws(actions, task.reward_fn(actions))
    search_config = config.search_config(method)
    if not search_config.needs_head:
        result = task.search(lm, search_config)
    else:  # a LoRA head brings its own backend (frozen prior, adapted states)
        result = task.search(head.lm or lm, search_config, head)  # the card says the λ it was trained at
    if not isinstance(result, SearchResult):  # SMC: no partial result (Ctrl-C raises KeyboardInterrupt)
        return MethodDraws(result.samples, result.sample_rewards)
    return MethodDraws(result.samples, result.sample_rewards, result.n_rollouts, result.interrupted)


def method_label(method: str, config: RunConfig) -> str:
    if method == "base":
        return "base sampling"
    if method == PEER:
        return "AutoARIMA (peer)"
    search = config.search_config(method)
    name = method if method in config.variants or method == HYBRID else search.method
    return f"{name}@{search.n_rollouts} λ={search.lam:g}"


def run_method(
    lm, codec: Codec, series: Series, method: str, config: RunConfig, head=None
) -> tuple[dict, np.ndarray]:
    """One table row and the forecasts (series units) of one method on one series."""
    task = ForecastTask.build(codec, series.context, series.horizon, config.reward)
    backends = [lm] if head is None or head.lm is None else [lm, head.lm]
    for backend in backends:
        backend.stats.reset()
    start = time.perf_counter()
    draws = peer_draws(task, series, config) if method == PEER else sample_method(lm, task, method, config, head)
    wall = time.perf_counter() - start
    forecasts = draws.forecasts if draws.forecasts is not None else task.values(draws.sequences)
    if forecasts.shape[0] == 0:
        raise RuntimeError(f"{series.name}/{method}: none of the {len(draws.sequences)} forecasts parsed")
    label = method_label(method, config)
    if draws.interrupted:
        label += f" (interrupted at {draws.rollouts} rollouts)"
    row = {
        "series": series.name,
        "method": label,
        "interrupted": draws.interrupted,
        "samples": int(forecasts.shape[0]),
        **scores(series, forecasts, config.reward.spectral.segment),
        "reward": float(np.mean(draws.rewards)),
        "nfe_tokens": sum(b.stats.tokens for b in backends),
        "forward_calls": sum(b.stats.forward_calls for b in backends),
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return row, forecasts


def run_series(lm, codec: Codec, series: Series, config: RunConfig, out_dir: Path, head=None,
               on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Every method on one series (`on_row` gets each row as it is done), then its fan chart and PSD plot;
    an interrupted row ends the list."""
    rows, forecasts = [], {}
    for method in config.methods:
        row, forecasts[row["method"]] = run_method(lm, codec, series, method, config, head)
        rows.append(row)
        on_row(row)
        if row["interrupted"]:
            break
    draw_plots(out_dir, series, forecasts, config.reward.spectral.segment)
    return rows


def load_series_list(config: RunConfig) -> list[Series]:
    series = [load_csv(config.csv, config.column)] if config.csv is not None else [
        load_builtin(name) for name in config.series]
    if config.horizon is not None:
        return [s.past_end(config.horizon) for s in series]
    for s in series:
        if s.horizon < MIN_HORIZON:
            raise ValueError(f"{s.name}: its held-out last 20% is {s.horizon} steps, under the {MIN_HORIZON} the "
                             f"spectral reward needs; use a series of at least {5 * MIN_HORIZON - 4} values, or "
                             f"`horizon: {MIN_HORIZON}` to forecast past its end")
    return series


def load_run_head(config: RunConfig) -> SearchHead | None:
    """The configured flow head, checked against the base model and codec (None when not set); a search
    at another λ than the head's warns when it starts (`search.sampler.make_sampler`)."""
    if config.head is None or not config.rows_reading_head:
        return None
    return load_search_head(
        config.head, lm_fingerprint(), to_dict(config.codec), backend=config.backend, device=config.device
    )


def main(argv: list[str] | None = None, default_config: str = "configs/search/airpassengers.yaml") -> int:
    parser = CommandParser(description="Forecast held-out series: base sampling and MaxEnt-TS.")
    parser.add_argument("--config", type=Path, default=Path(default_config))
    parser.add_argument("--series", nargs="+", help="override the config's series (built-in names)")
    parser.add_argument("--n-samples", type=int, help="override the config's n_samples")
    parser.add_argument("--head", help="override the config's flow-head folder (e.g. one you trained)")
    args = parser.parse_args(argv)
    console = Console(width=150)  # a wide table even when piped to a log
    errors = Console(stderr=True, width=150)

    def refuse(message: object) -> int:  # user text (paths, columns) is printed as text, never as markup
        errors.print(f"[red]error:[/red] {escape(one_line(str(message)))}", highlight=False, soft_wrap=True)
        return 2

    try:
        config = load_config(args.config, RunConfig)
        overrides = {"series": args.series, "n_samples": args.n_samples, "head": args.head}
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        series_list = load_series_list(config)
        check_output_dir(Path(config.output_dir))
    except (ConfigError, ValueError) as err:
        return refuse(err)
    lm, tokenizer = load_base_lm(dtype=config.dtype, device=config.device, backend=config.backend)
    codec = Codec(tokenizer, config.codec)
    try:
        head = load_run_head(config)
    except (FileNotFoundError, HeadMismatchError) as err:
        return refuse(err)
    out_dir = Path(config.output_dir)
    try:  # every series fits the LM's window, and every search its memory, checked before any forward
        for series in series_list:
            task = ForecastTask.build(codec, series.context, series.horizon, config.reward,
                                      window=getattr(lm, "context_window", None), back_test=series.held_out)
            for method in (m for m in config.methods if m not in ("base", PEER)):
                check_resources(lm, len(task.prompt_ids), task.grammar, len(codec.action_token_ids),
                                config.search_config(method))
    except ValueError as err:  # ContextTooLong, or a search over the memory budget
        return refuse(f"{series.name}: {err}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    results = ResultsFile(out_dir)
    interrupted = False
    try:
        for series in series_list:
            rows = run_series(lm, codec, series, config, out_dir, head, on_row=results.add)
            if rows[-1]["interrupted"]:  # a tree search stopped by Ctrl-C: keep what is done, run nothing more
                interrupted = True
                break
    except KeyboardInterrupt:  # Ctrl-C outside a tree search (base sampling, SMC, scoring)
        interrupted = True
    except ValueError as err:  # bad input found mid-run (e.g. a reward that is not a number): rows so far are kept
        return refuse(err)
    if results.rows:
        print_table(results.rows, console, held_out=config.horizon is None)
    if interrupted:
        done = (f"after {escape(results.rows[-1]['series'])} / {escape(results.rows[-1]['method'])}"
                if results.rows else "before any row")
        errors.print(f"interrupted: stopped {done}; finished rows are in {escape(str(results.path))}")
        return 130  # the shell's status for Ctrl-C: a script can tell a cut-short job from a finished one
    console.print(f"plots and results.csv in {escape(str(out_dir))}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
