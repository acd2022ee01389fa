"""The amortisation benchmark's real part: every method on held-out windows of the real series, scored
(`benchmarks/amortisation.py --part real`); resumable per window."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.evaluation.tables import write_csv
from sadt.config import to_dict
from sadt.head_io import warn_if_other_lam
from search.config import SearchConfig, search_config
from search.forecast_task import PARAMETER_FREE_VALUES


@dataclass(frozen=True)
class RealPart:
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Sunspots", "Wine", "Wooly"])
    context_length: int = 48
    horizon: int = 12
    head: str = "checkpoints/heads/soft_ahead_lam15"  # a head's folder or a forecast_task.PARAMETER_FREE_VALUES name
    lam: float = 5.0
    n_samples: int = 16
    budgets: list[int] = field(default_factory=lambda: [25, 50, 100, 200, 400])  # MC-only curve; last = reference
    hybrid_budgets: list[int] = field(default_factory=lambda: [25, 50, 100, 200])
    baseline_budget: int = 100  # best-of-N, MCTS-UCT, DTS, SMC, twisted SMC
    batch_size: int = 16
    hybrid_n0: float = 10.0
    hybrid_offset: bool = False
    hybrid_guide_scale: float = 1.0  # the hybrid's rollouts draw from P_F ∝ p exp(s·λ·Q_φ) (SearchConfig.guide_scale)
    seed: int = 0
    bootstrap: int = 2000
    windows_per_series: int = 1  # held-out windows tiling each test part; fewer where the test part is short
    baselines: bool = True  # base sampling is always run; False skips best-of-N ... pure F_φ (the curves only)
    in_tree: bool = False  # also both curves with in-tree and with resampled draws, one anytime search per curve
    search_sampler: bool = True  # the `sampling: search` curves (one search per budget); False keeps only the
    # anytime curves (needs in_tree), so a 2000-rollout reference costs one search per window, not two

    def __post_init__(self) -> None:
        if not (self.search_sampler or self.in_tree):
            raise ValueError("real `search_sampler: false` needs `in_tree: true` (no curve would be left)")


def heldout_windows(name: str, config: RealPart) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, context, truth) for window k = 0, 1, ... of `name`'s test part (`benchmarks.evaluation.windows`)."""
    from benchmarks.evaluation.windows import heldout_windows as windows

    if config.windows_per_series < 1:
        raise ValueError(f"real.windows_per_series must be >= 1, got {config.windows_per_series}")
    return windows(name, config.windows_per_series, config.context_length, config.horizon)


def series_of(window: str) -> str:
    """The series a window label belongs to: `Wine+12` → `Wine`."""
    return window.split("+")[0]


def real_rows(config: RealPart) -> list[tuple[str, str, SearchConfig | None, bool]]:
    """(row label, curve, search config or None for base sampling, uses the head) for every row."""
    base = search_config(lam=config.lam, batch_size=config.batch_size, n_samples=config.n_samples, seed=config.seed,
                         progress=False)
    rows = [("base sampling", "", None, False)]
    for method in ("best_of_n", "mcts_uct", "dts", "smc", "twisted_smc") if config.baselines else ():
        rows.append((f"{method}@{config.baseline_budget}", "",
                     base.for_method(method, n_rollouts=config.baseline_budget),
                     method == "twisted_smc"))
    if config.baselines:
        rows.append((f"flow (pure F_φ)@{config.n_samples}", "",
                     base.for_method("flow", n_rollouts=config.n_samples), True))
    for b in config.budgets if config.search_sampler else ():
        rows.append((f"maxent_ts@{b}", "MC-only", dataclasses.replace(base, n_rollouts=b, sampling="search"), False))
    for b in config.hybrid_budgets if config.search_sampler else ():
        hybrid = dataclasses.replace(base, n_rollouts=b, sampling="search", hybrid="visits", hybrid_n0=config.hybrid_n0,
                                     hybrid_offset=config.hybrid_offset, guide_scale=config.hybrid_guide_scale)
        rows.append((f"hybrid@{b}", "hybrid", hybrid, True))
    return rows


IN_TREE = " in-tree"  # suffix of the in-tree curves' row labels and curve names


RESAMPLED = " resampled"  # ... and of the curves resampling the draws by their importance weights


def anytime_curves(config: RealPart) -> list[tuple[str, str, SearchConfig, list[int], bool]]:
    """(label prefix, curve, search config at the curve's largest budget, budgets, uses the head).

    `sampling: search` makes each sample one more selection and rollout: below the first
    unvisited child (at 48 tokens' depth, early) a sample is a fresh rollout from p (from P_F
    under the hybrid), so an MC-only sample is mostly prior. In-tree samples (DTS Alg. 2) only
    reweight the visited terminals; resampled ones (`TreeSearch.resample_draws`) reweight every draw
    by p e^{λr} / q. One search per curve serves all its budgets and both samplers (`run(until)`).
    """
    if not config.in_tree:
        return []
    base = search_config(lam=config.lam, batch_size=config.batch_size, n_samples=config.n_samples, seed=config.seed,
                         progress=False, sampling="tree")
    hybrid = dataclasses.replace(base, hybrid="visits", hybrid_n0=config.hybrid_n0, hybrid_offset=config.hybrid_offset,
                                 guide_scale=config.hybrid_guide_scale)
    return [
        ("maxent_ts", "MC-only", dataclasses.replace(base, n_rollouts=max(config.budgets)), sorted(config.budgets),
         False),
        ("hybrid", "hybrid", dataclasses.replace(hybrid, n_rollouts=max(config.hybrid_budgets)),
         sorted(config.hybrid_budgets), True),
    ]


def kept_row(keep: list[dict], window: str, label: str, reuse: bool) -> dict | None:
    """The earlier row for (window, label) when it may be reused, else None (run it)."""
    found = [r for r in keep if r["series"] == window and r["method"] == label]
    return found[0] if found and reuse else None


def run_real(config: RealPart, out: Path, keep: list[dict] | None = None, keep_head_rows: bool = False) -> list[dict]:
    """Every row of `real_rows` and `anytime_curves` on every held-out window. With `keep` (rows of an
    earlier real.csv), rows found there are taken from it rather than re-run: all of them with
    `keep_head_rows` (resuming a run), else only those that do not read the head (a new head against
    the same references)."""
    from sadt.codec import Codec
    from sadt.head_io import load_value_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.ancestral import sample_prior
    from search.forecast_task import ForecastTask

    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    head = config.head  # a parameter-free Q(s, a) = R(s·a), R⁺(s·a) or R⁺ᵈ(s·a), bound to each window by `task.search`
    if config.head not in PARAMETER_FREE_VALUES:
        head, card = load_value_head(config.head, lm_fingerprint(), to_dict(codec.config))
        warn_if_other_lam(card.lam, config.lam, f"head {config.head}")
    rows = []
    windows = [w for name in config.series for w in heldout_windows(name, config)]
    for name, context, truth in tqdm(windows, desc="held-out windows", unit="window"):
        task = ForecastTask.build(codec, context, config.horizon)
        for label, curve, row_config, uses_head in real_rows(config):
            kept = kept_row(keep or [], name, label, reuse=keep_head_rows or not uses_head)
            if kept is not None:
                rows.append(kept)
                continue
            lm.stats.reset()
            start = time.perf_counter()
            if row_config is None:
                samples, _ = sample_prior(lm, task, n_samples=config.n_samples, batch_size=config.n_samples,
                                          seed=config.seed, progress=False)
                rewards, roots, n_rollouts = task.reward_fn(samples), (float("nan"),) * 2, config.n_samples
                ess = float("nan")
            else:
                result = task.search(lm, row_config, head if uses_head else None)
                samples, rewards, n_rollouts = result.samples, result.sample_rewards, result.n_rollouts
                roots = result.root_value, getattr(result, "root_value_is", float("nan"))  # IS: maxent_ts only
                ess = getattr(result, "draws_ess", float("nan"))  # maxent_ts only
            rows.append(scored_row(task, truth, samples, rewards, {
                "series": name, "method": label, "curve": curve,
                "budget": row_config.n_rollouts if row_config else 0, "rollouts_run": n_rollouts,
            }, roots, lm.stats.tokens, time.perf_counter() - start, ess))
        for prefix, curve, curve_config, budgets, uses_head in anytime_curves(config):
            labels = [f"{prefix}@{b}{suffix}" for b in budgets for suffix in (IN_TREE, RESAMPLED)]
            kept = [kept_row(keep or [], name, label, reuse=keep_head_rows or not uses_head) for label in labels]
            if all(r is not None for r in kept):
                rows += kept
                continue
            lm.stats.reset()
            search = task.sampler(lm, curve_config, head if uses_head else None)
            for budget in budgets:
                result = search.run(until=budget)  # in-tree samples drawn from the tree as it stands at `budget`
                resampled = search.resample_draws(config.n_samples)
                for suffix, nodes in ((IN_TREE, result.sample_nodes), (RESAMPLED, resampled)):
                    rows.append(scored_row(
                        task, truth, [search.tree.actions_to(n) for n in nodes], search.tree.reward[nodes],
                        {"series": name, "method": f"{prefix}@{budget}{suffix}", "curve": curve + suffix,
                         "budget": budget, "rollouts_run": result.n_rollouts},
                        (result.root_value, result.root_value_is), result.nfe_tokens, result.wall_s,
                        result.draws_ess))
        reference = next(r for r in rows if r["series"] == name and r["method"] == reference_label(config))
        for r in rows:
            if r["series"] == name:
                r["root_error"] = abs(r["root_value"] - reference["root_value"])
        write_csv(out / "real.csv", rows_to_keep(rows, keep or [], keep_head_rows))  # `--resume` goes on from here
    return rows


def rows_to_keep(rows: list[dict], keep: list[dict], resuming: bool) -> list[dict]:
    """What real.csv holds after a window: the rows so far and, when resuming, the earlier run's rows of
    windows not reached yet, so a second interruption loses nothing (another run's rows, under
    `--head-rows-only`, are never written as this run's)."""
    ran = {(r["series"], r["method"]) for r in rows}
    return rows + [r for r in keep if resuming and (r["series"], r["method"]) not in ran]


def reference_label(config: RealPart) -> str:
    """The row whose root value the others' root error is measured against: MC-only at the largest budget."""
    return f"maxent_ts@{config.budgets[-1]}" + ("" if config.search_sampler else IN_TREE)


def scored_row(task, truth: np.ndarray, samples: list[list[int]], rewards: np.ndarray, ids: dict,
               roots: tuple[float, float], nfe_tokens: int, wall_s: float, draws_ess: float = float("nan")) -> dict:
    """`ids` plus the samples' CRPS, scaled MAE, Spec-W1 and mean reward, the root value (V̂(root) and
    the draws' importance-sampling estimate, `SearchResult.root_value_is`), the cost and, for maxent_ts,
    the draws' effective sample size (`SearchResult.draws_ess`: how many independent π* draws the
    resampled samples are worth)."""
    from sadt.metrics import crps, scaled_mae
    from sadt.spectral import spec_w1

    forecasts = task.values(samples)
    row = {**ids, "crps": crps(truth, forecasts), "scaled_mae": scaled_mae(truth, forecasts),
           "spec_w1": float(spec_w1(forecasts, truth, min(16, len(truth))).mean()),
           "reward": float(np.mean(rewards)), "root_value": roots[0], "root_value_is": roots[1],
           "nfe_tokens": nfe_tokens, "wall_s": wall_s, "draws_ess": draws_ess}
    tqdm.write(f"{ids['series']:17s} {ids['method']:24s} reward {row['reward']:8.3f} root {roots[0]:8.3f} "
               f"(IS {roots[1]:8.3f}) wall {wall_s:6.1f}s")
    return row


SUMMARY_COLUMNS = ("crps", "scaled_mae", "spec_w1", "reward", "root_error", "nfe_tokens", "wall_s")


def method_means(rows: list[dict]) -> str:
    """One line per method: each of `SUMMARY_COLUMNS` averaged over the held-out windows (NaN-free ones)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"| method (mean of {len({r['series'] for r in rows})} windows) | CRPS | scaled MAE | Spec-W1 | reward | "
             "root err | NFE tok | wall s |", "|---|---|---|---|---|---|---|---|"]
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        means = [np.nanmean([float(r[c]) for r in own]) if any(np.isfinite(float(r[c])) for r in own) else np.nan
                 for c in SUMMARY_COLUMNS]
        cells = [f"{m:.0f}" if c == "nfe_tokens" else f"{m:.1f}" if c == "wall_s" else f"{m:.3f}"
                 for c, m in zip(SUMMARY_COLUMNS, means)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def real_summary(rows: list[dict]) -> str:
    from data.published import published_results

    lines = ["| series | method | CRPS | scaled MAE | Spec-W1 | reward | root err | NFE tok | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['series']} | {r['method']} | {r['crps']:.3f} | {r['scaled_mae']:.3f} | "
                     f"{r['spec_w1']:.3f} | {r['reward']:.3f} | {r['root_error']:.3f} | {r['nfe_tokens']} | "
                     f"{r['wall_s']:.1f} |")
    for name in sorted({series_of(r["series"]) for r in rows}):
        for ref in published_results(name):
            lines.append(f"| {name} | LLMTime published: {ref['method']} (full test horizon) | {ref['crps']:.3f} | "
                         f"{ref['mae']:.3f} | | | | | |")
    return "\n".join(lines)
