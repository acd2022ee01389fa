"""The amortisation result: does the hybrid (MC + F_φ) at a small budget do what MC-only does at a large one?

    python benchmarks/amortisation.py --config benchmarks/configs/amortisation.yaml [--part toy|real|all]

Part `toy` (exact, seconds): the enumerable toy of `benchmarks/evaluation/exact.py`. For MC-only MaxEnt-TS
and the hybrid with (a) a head trained with TB on trajectories of one MC-only search (seed 100)
and (b) the exact head, over budgets and seeds: total variation to π* of the `sampling: search`
draw (its exact distribution) and of the in-tree sampler, and the root-value error.

Part `real` (the forecasting task, held-out windows): for each series, up to `windows_per_series`
non-overlapping windows whose horizons tile LLMTime's test part (never harvested) from its start;
each context is the `context_length` steps before its horizon. Window `k` of a series is labelled
`<series>+<k·horizon>` (the first keeps the bare series name). Rows: base sampling, best-of-N, MCTS-UCT, DTS, SMC,
twisted SMC, pure F_φ, MC-only MaxEnt-TS at every budget and the hybrid at every budget, with
CRPS, scaled MAE, Spec-W1, the samples' mean reward, the root value's error against MC-only at
the largest budget, NFE and wall time. The amortisation factor is `reference / b*`, b* the
smallest hybrid budget whose mean sample reward is at least MC-only's at the reference budget
(mean over windows); its interval comes from a bootstrap over windows. MC-only at the reference
budget need not be near π*: `benchmarks/target_reference.py` scores the same rows against an
importance-sampling estimate of π*'s mean reward and log Z / λ.

Writes `<output_dir>/toy.csv|png|md`, `real.csv|md` and `reward_vs_rollouts.png`. `real.csv` is
rewritten after every window; `--resume` keeps its rows and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT_DIR = Path(__file__).resolve().parents[1]

from sadt.cli import CommandParser, run_command  # noqa: E402
from sadt.config import load_config, to_dict  # noqa: E402
from sadt.head_io import warn_if_other_lam  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.forecast_task import PARAMETER_FREE_VALUES  # noqa: E402


@dataclass(frozen=True)
class ToyPart:
    lam: float = 2.0
    length: int = 5  # actions per sequence: 3**length terminals, all enumerated
    exact_head: bool = True  # also the hybrid with the exact soft values as its head
    budgets: list[int] = field(default_factory=lambda: [20, 40, 80, 160, 320, 640, 1280])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    train_rollouts: int = 1000  # the MC-only search whose trajectories train the toy head
    train_steps: int = 1500
    hybrid_n0: list[float] = field(default_factory=lambda: [1.0, 10.0])  # α = n0 / (n0 + N)
    hybrid_offset: list[bool] = field(default_factory=lambda: [False, True])  # SearchConfig.hybrid_offset


@dataclass(frozen=True)
class RealPart:
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Sunspots", "Wine", "Wooly"])
    context_length: int = 48
    horizon: int = 12
    head: str = "benchmarks/experiments/heads/recipe"  # a head's folder or a forecast_task.PARAMETER_FREE_VALUES name
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


@dataclass(frozen=True)
class AmortisationConfig:
    output_dir: str = "benchmarks/results/amortisation"
    toy: ToyPart = field(default_factory=ToyPart)
    real: RealPart = field(default_factory=RealPart)


# -- toy ---------------------------------------------------------------------------------------


def train_toy_head(toy, lam: float, rollouts: int, steps: int):
    """An MLP head trained with TB + DB on the trajectories of one MC-only search (seed 100).

    TB alone fixes P_F^φ but leaves Q_φ(s, ·) free up to a constant per state (V_φ moves with it),
    while the hybrid mixes Q_φ with Monte-Carlo values in absolute terms: DB's residual
    `λ (Q_φ(s_t, a_t) − V_φ(s_{t+1}))` (and `Q_φ = r` at the end) pins the level.
    """
    from benchmarks.evaluation.exact import ACTION_IDS, PROMPT
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead
    from sadt.losses import detailed_balance, trajectory_balance

    torch.manual_seed(0)
    view = toy.search(lam, rollouts, seed=100).tree.trajectories()
    sequences = [a.tolist() for a in view.split("actions")]
    prompt = toy.lm.prefill(PROMPT)
    hidden, logits = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
    hidden, log_prior = hidden[:, :-1].float(), torch.log_softmax(logits[:, :-1], dim=-1).float()
    actions, reward = torch.tensor(sequences), torch.tensor(view.rewards, dtype=torch.float32)
    mask = torch.ones_like(actions, dtype=torch.bool)
    head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].float(), FlowHeadConfig(hidden=64))
    optimiser = torch.optim.Adam([
        {"params": [p for n, p in head.named_parameters() if not n.startswith("log_z")], "lr": 1e-2},
        {"params": head.log_z_mlp.parameters(), "lr": 3e-2},
    ])
    for _ in range(steps):
        optimiser.zero_grad()
        args = (head.q(hidden), log_prior, actions, mask, head.log_z(hidden[:, 0]), reward, lam)
        (trajectory_balance(*args) + detailed_balance(*args)).mean().backward()
        optimiser.step()
    head.eval().requires_grad_(False)
    return lambda h: head.q(h.float()).double(), len(sequences)


def toy_head_q(toy, head) -> np.ndarray:
    """Q_φ at every state of every sequence, (S, L, A)."""
    from benchmarks.evaluation.exact import ACTION_IDS, PROMPT

    prompt = toy.lm.prefill(PROMPT)
    hidden, _ = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in toy.sequences], ACTION_IDS)
    with torch.no_grad():
        return head(hidden[:, :-1]).double().numpy()


def run_toy(config: ToyPart, out: Path) -> list[dict]:
    from benchmarks.evaluation.exact import (
        ExactHead,
        Toy,
        policy_step_log_probs,
        resample_distribution,
        search_sampler_distribution,
        total_variation,
        tree_distribution,
    )
    from search.tree_search import TreeSearch

    toy, lam = Toy(length=config.length), config.lam
    target, exact_root = toy.target(lam)
    trained, n_traj = train_toy_head(toy, lam, config.train_rollouts, config.train_steps)
    trained_completion = policy_step_log_probs(toy, lam, toy_head_q(toy, trained))
    variants = {"MC-only": (None, policy_step_log_probs(toy, lam), 0.0, False)}
    for offset in config.hybrid_offset:
        for n0 in config.hybrid_n0:
            label = f"hybrid n0={n0:g}{', offset' if offset else ''}, TB+DB head ({n_traj} traj.)"
            variants[label] = (trained, trained_completion, n0, offset)
    if config.exact_head:
        variants["hybrid n0=10, exact head"] = (ExactHead(toy, lam), policy_step_log_probs(toy, lam, toy.exact_q(lam)),
                                                10.0, False)
    share = reward_share(toy.table, np.exp(toy.log_p), target)
    rows = []
    for name, (head, completion, n0, offset) in variants.items():
        for budget in config.budgets:
            for seed in config.seeds:
                search_config = SearchConfig(
                    lam=lam, n_rollouts=budget, batch_size=8, seed=seed, progress=False, sampling="search",
                    hybrid="visits" if head is not None else "off", hybrid_n0=n0, hybrid_offset=offset,
                )
                search = TreeSearch(toy.lm, toy.problem, search_config, head)
                root_is = search.run().root_value_is
                by_search, in_tree = search_sampler_distribution(search, toy, completion), tree_distribution(search)
                resampled = resample_distribution(search, toy)
                rows.append({
                    "variant": name, "rollouts": budget, "seed": seed,
                    "tv_search_sampler": total_variation(by_search, target),
                    "tv_tree_sampler": total_variation(in_tree, target),
                    "root_error": abs(float(search.tree.value[0]) - exact_root),
                    "root_bias": float(search.tree.value[0]) - exact_root, "root_bias_is": root_is - exact_root,
                    "share_search_sampler": share(by_search), "share_tree_sampler": share(in_tree),
                    "tv_resampled": total_variation(resampled, target), "share_resampled": share(resampled),
                })
        print(f"toy: {name} done", flush=True)
    write_csv(out / "toy.csv", rows)
    plot_toy(rows, out / "toy.png", config.length)
    return rows


def reward_share(reward: np.ndarray, prior: np.ndarray, target: np.ndarray):
    """q ↦ (E_q[r] − E_p[r]) / (E_π*[r] − E_p[r]), exactly, for distributions over every sequence:
    0 for the prior, 1 for π*."""
    prior_reward = float(prior @ reward)
    gap = float(target @ reward) - prior_reward
    return lambda q: (float(q @ reward) - prior_reward) / gap


def plot_toy(rows: list[dict], path: Path, length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("tv_search_sampler", "TV to π* (sampling: search)"), ("tv_tree_sampler", "TV to π* (in-tree sampler)"),
               ("root_error", "|V̂(root) − V(root)|"),
               ("share_search_sampler", "share of E_p→E_π* reward gap (search)"),
               ("share_tree_sampler", "share of E_p→E_π* reward gap (in-tree)"),
               ("share_resampled", "share of E_p→E_π* reward gap (resampled)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
    for ax, (key, label) in zip(axes, metrics):
        log_axis = not key.startswith("share")
        for variant in dict.fromkeys(r["variant"] for r in rows):
            budgets = sorted({r["rollouts"] for r in rows if r["variant"] == variant})
            sel = [r for r in rows if r["variant"] == variant]
            values = np.array([[r[key] for r in sel if r["rollouts"] == b] for b in budgets])  # (budgets, seeds)
            if log_axis:
                values = np.maximum(values, 1e-9)  # the exact head's errors are ~1e-8: keep them on a log axis
            ax.plot(budgets, values.mean(1), marker="o", label=variant)
            ax.fill_between(budgets, values.min(1), values.max(1), alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log" if log_axis else "linear")
        ax.set_xlabel("rollouts")
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle(f"Exact toy (3 actions, length {length}): mean and min-max over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- real series -------------------------------------------------------------------------------


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
    base = SearchConfig(lam=config.lam, batch_size=config.batch_size, n_samples=config.n_samples, seed=config.seed,
                        progress=False)
    rows = [("base sampling", "", None, False)]
    for method in ("best_of_n", "mcts_uct", "dts", "smc", "twisted_smc") if config.baselines else ():
        rows.append((f"{method}@{config.baseline_budget}", "",
                     dataclasses.replace(base, method=method, n_rollouts=config.baseline_budget),
                     method == "twisted_smc"))
    if config.baselines:
        rows.append((f"flow (pure F_φ)@{config.n_samples}", "",
                     dataclasses.replace(base, method="flow", n_rollouts=config.n_samples), True))
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
    base = SearchConfig(lam=config.lam, batch_size=config.batch_size, n_samples=config.n_samples, seed=config.seed,
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
        for label, curve, search_config, uses_head in real_rows(config):
            kept = kept_row(keep or [], name, label, reuse=keep_head_rows or not uses_head)
            if kept is not None:
                rows.append(kept)
                continue
            lm.stats.reset()
            start = time.perf_counter()
            if search_config is None:
                samples, _ = sample_prior(lm, task, n_samples=config.n_samples, batch_size=config.n_samples,
                                          seed=config.seed, progress=False)
                rewards, roots, n_rollouts = task.reward_fn(samples), (float("nan"),) * 2, config.n_samples
                ess = float("nan")
            else:
                result = task.search(lm, search_config, head if uses_head else None)
                samples, rewards, n_rollouts = result.samples, result.sample_rewards, result.n_rollouts
                roots = result.root_value, getattr(result, "root_value_is", float("nan"))  # IS: maxent_ts only
                ess = getattr(result, "draws_ess", float("nan"))  # maxent_ts only
            rows.append(scored_row(task, truth, samples, rewards, {
                "series": name, "method": label, "curve": curve,
                "budget": search_config.n_rollouts if search_config else 0, "rollouts_run": n_rollouts,
            }, roots, lm.stats.tokens, time.perf_counter() - start, ess))
        for prefix, curve, search_config, budgets, uses_head in anytime_curves(config):
            labels = [f"{prefix}@{b}{suffix}" for b in budgets for suffix in (IN_TREE, RESAMPLED)]
            kept = [kept_row(keep or [], name, label, reuse=keep_head_rows or not uses_head) for label in labels]
            if all(r is not None for r in kept):
                rows += kept
                continue
            lm.stats.reset()
            search = task.sampler(lm, search_config, head if uses_head else None)
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


def bootstrap_means(per_window: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means over windows (axis 0) of `n_boot` resamples of the windows with replacement: (n_boot, ...)."""
    n = len(per_window)
    return np.array([per_window[rng.integers(0, n, n)].mean(0) for _ in range(n_boot)])


def amortisation_factor(rows: list[dict], config: RealPart, rng: np.random.Generator, sampler: str = "") -> dict:
    """reference / b*, b* the smallest hybrid budget whose mean reward ≥ MC-only's at the reference.

    `sampler`: "" for the `sampling: search` rows, `IN_TREE` or `RESAMPLED` for the anytime curves
    (each compared with its own kind).

    The same rule applied to MC-only's own smaller budgets (`mc_self_factor`) is the control: when
    it also reports a factor > 1, the windows' reward noise is larger than the effect measured.
    """
    series = sorted({r["series"] for r in rows})
    reference = f"maxent_ts@{config.budgets[-1]}{sampler}"
    by = {(r["series"], r["method"]): r for r in rows}

    def gaps(label: str, budgets: list[int]) -> np.ndarray:  # (windows, budgets) reward − reference's
        return np.array([[by[s, f"{label}@{b}{sampler}"]["reward"] - by[s, reference]["reward"] for b in budgets]
                         for s in series])

    def factor(sample: np.ndarray, budgets: list[int]) -> float:
        matched = np.flatnonzero(sample.mean(0) >= 0)
        return config.budgets[-1] / budgets[matched[0]] if matched.size else 0.0  # 0: no budget matched

    hybrid = gaps("hybrid", config.hybrid_budgets)
    boot = np.array([factor(hybrid[rng.integers(0, len(series), len(series))], config.hybrid_budgets)
                     for _ in range(config.bootstrap)])
    mc_budgets = config.budgets[:-1]
    equal = [b for b in config.hybrid_budgets if b in mc_budgets]
    paired = hybrid[:, [config.hybrid_budgets.index(b) for b in equal]] - gaps("maxent_ts", equal)  # (windows, b)
    paired_boot = bootstrap_means(paired, rng, config.bootstrap)
    labels = [f"{label}@{b}" for label, budgets in (("maxent_ts", mc_budgets), ("hybrid", config.hybrid_budgets))
              for b in budgets]

    def root_error(key: str) -> dict[str, float]:  # |row[key] − the same sampler's reference's|, mean over windows
        return {label: round(float(np.mean([abs(by[s, label + sampler][key] - by[s, reference][key])
                                            for s in series])), 4) for label in labels}

    return {
        "windows": len(series),
        "factor": factor(hybrid, config.hybrid_budgets),
        "ci_low": float(np.percentile(boot, 2.5)),  # bootstrap over windows; 0 = no hybrid budget matched
        "ci_high": float(np.percentile(boot, 97.5)),
        "boot_matched": float((boot > 0).mean()),  # share of resamples where some hybrid budget matched
        "hybrid_reward_gaps": dict(zip(config.hybrid_budgets, hybrid.mean(0).round(4).tolist())),
        # hybrid@b − maxent_ts@b per window at equal rollouts: mean and bootstrap 95% interval
        "equal_budget_reward_gain": {b: [round(float(x), 4) for x in (paired[:, i].mean(),
                                         *np.percentile(paired_boot[:, i], [2.5, 97.5]))] for i, b in enumerate(equal)},
        "mc_self_factor": factor(gaps("maxent_ts", mc_budgets), mc_budgets),
        "mc_reward_gaps": dict(zip(mc_budgets, gaps("maxent_ts", mc_budgets).mean(0).round(4).tolist())),
        "mean_root_error_vs_reference": root_error("root_value"),  # V̂(root)
        # the draws' IS estimate of Z (`SearchResult.root_value_is`): unbiased for Z, unlike V̂
        "mean_root_is_error_vs_reference": root_error("root_value_is"),
    }


def ess_ratios(rows: list[dict], config: RealPart, rng: np.random.Generator) -> dict:
    """How many effective π* samples the searches' draws are worth (`draws_ess`, the anytime curves),
    compared as per-window ratios: geometric mean over windows and bootstrap 95% interval.

    - `hybrid_vs_mc_equal_budget`: ESS(hybrid@b) / ESS(MC-only@b), the gain per rollout;
    - `hybrid_vs_mc_reference`: ESS(hybrid@b) / ESS(MC-only@reference); ≥ 1 at b = 200 means 200
      hybrid rollouts give the resampled sampler as many effective draws as 2000 MC-only ones;
    - `mc_growth`: ESS(MC-only@b) / ESS(MC-only@first budget), the control for how ESS grows with rollouts;
    - `factor`: per hybrid budget, the MC-only budget with as many effective samples, over b (`ess_factor`).
    """
    windows = sorted({r["series"] for r in rows})

    def summary(log_ratio: np.ndarray, budgets: list[int]) -> dict:
        boot = bootstrap_means(log_ratio, rng, config.bootstrap)
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        return {b: [round(float(np.exp(x)), 3) for x in (log_ratio[:, i].mean(), low[i], high[i])]
                for i, b in enumerate(budgets)}

    mc = log_draws_ess(rows, windows, "maxent_ts", config.budgets)
    hybrid = log_draws_ess(rows, windows, "hybrid", config.hybrid_budgets)
    equal = [b for b in config.hybrid_budgets if b in config.budgets]
    mc_at_equal = mc[:, [config.budgets.index(b) for b in equal]]
    hybrid_at_equal = hybrid[:, [config.hybrid_budgets.index(b) for b in equal]]
    return {
        "windows": len(windows),
        "hybrid_vs_mc_equal_budget": summary(hybrid_at_equal - mc_at_equal, equal),
        "hybrid_vs_mc_reference": summary(hybrid - mc[:, -1:], config.hybrid_budgets),
        "mc_growth": summary(mc - mc[:, :1], config.budgets),
        "factor": ess_factor(mc, hybrid, config, rng),
    }


def is_log_z_errors(rows: list[dict], config: RealPart, rng: np.random.Generator, sampler: str = RESAMPLED) -> dict:
    """How far each search's importance-sampled log Z lands from MC-only's at the reference budget, per window:
    |λ·V_IS(search) − λ·V_IS(MC-only@reference)| (`root_value_is`, unbiased for Z; log Z = λ V).

    `mc`, `hybrid`: per budget, the mean error over windows and its bootstrap 95% interval; `paired`: per
    budget both run at, hybrid − MC-only per window (negative: the hybrid is closer), mean and interval.
    """
    windows = sorted({r["series"] for r in rows})
    value = {(r["series"], r["method"]): r["root_value_is"] for r in rows}

    def errors(label: str, budget: int) -> np.ndarray:
        return config.lam * np.abs([value[w, f"{label}@{budget}{sampler}"] - value[w, reference] for w in windows])

    def mean_and_interval(per_window: np.ndarray) -> list[float]:
        boot = bootstrap_means(per_window, rng, config.bootstrap)
        return [round(float(x), 4) for x in (per_window.mean(), *np.percentile(boot, [2.5, 97.5]))]

    reference = f"maxent_ts@{config.budgets[-1]}{sampler}"
    equal = [b for b in config.hybrid_budgets if b in config.budgets]
    return {
        "windows": len(windows),
        "mc": {b: mean_and_interval(errors("maxent_ts", b)) for b in config.budgets[:-1]},
        "hybrid": {b: mean_and_interval(errors("hybrid", b)) for b in config.hybrid_budgets},
        "paired": {b: mean_and_interval(errors("hybrid", b) - errors("maxent_ts", b)) for b in equal},
    }


def log_draws_ess(rows: list[dict], windows: list[str], label: str, budgets: list[int]) -> np.ndarray:
    """log ESS of the draws of `label`'s anytime search (e.g. "hybrid") per window and budget: (windows, budgets)."""
    ess = {(r["series"], r["method"]): r.get("draws_ess", np.nan) for r in rows}
    return np.log([[ess[w, f"{label}@{b}{RESAMPLED}"] for b in budgets] for w in windows])


def plot_ess(rows: list[dict], config: RealPart, factor: dict, path: Path, rng: np.random.Generator) -> None:
    """The draws' effective samples against rollouts, MC-only and hybrid: geometric mean over windows with
    a bootstrap 95% band, each window faint; the title gives the factor at the hybrid's largest budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = sorted({r["series"] for r in rows})
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for label, name, budgets, color in (("maxent_ts", "MC-only", config.budgets, "C0"),
                                        ("hybrid", "hybrid", config.hybrid_budgets, "C1")):
        log_ess = log_draws_ess(rows, windows, label, budgets)
        boot = bootstrap_means(log_ess, rng, config.bootstrap)
        ax.plot(budgets, np.exp(log_ess.T), color=color, alpha=0.2, linewidth=0.8)
        ax.plot(budgets, np.exp(log_ess.mean(0)), color=color, marker="o", label=f"{name} (geometric mean)")
        ax.fill_between(budgets, *np.exp(np.percentile(boot, [2.5, 97.5], axis=0)), color=color, alpha=0.2)
    last = config.hybrid_budgets[-1]
    (low, high), point = factor[last]["ci"], factor[last]["factor"]
    ax.set_title(f"{len(windows)} windows; hybrid@{last} ≈ MC-only@{point * last:.0f}: "
                 f"factor {point:.1f} [{low:.1f}, {high:.1f}]", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(config.budgets, [str(b) for b in config.budgets])
    ax.tick_params(axis="x", labelrotation=45)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("rollouts")
    ax.set_ylabel("effective samples of the draws")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ess_factor(log_mc: np.ndarray, log_hybrid: np.ndarray, config: RealPart, rng: np.random.Generator) -> dict:
    """The amortisation factor on effective samples: for each hybrid budget b, b_MC / b, where b_MC is the
    MC-only budget whose draws have as many effective samples (geometric mean over windows) as the hybrid's
    at b, interpolated in log budget along MC-only's curve. `log_mc`, `log_hybrid`: log ESS, (windows, budgets).

    Point value on all windows, bootstrap 95% interval over windows; inf when the hybrid beats MC-only's
    largest budget (`censored`: the share of resamples where it did), so the interval's top may be inf.
    """
    def factors(rows: np.ndarray) -> np.ndarray:
        mc_curve, hybrid_mean = log_mc[rows].mean(0), log_hybrid[rows].mean(0)
        return np.array([budget_reaching(config.budgets, mc_curve, h) / b
                         for h, b in zip(hybrid_mean, config.hybrid_budgets)])

    windows = len(log_mc)
    boot = np.array([factors(rng.integers(0, windows, windows)) for _ in range(config.bootstrap)])
    low, high = np.percentile(boot, [2.5, 97.5], axis=0, method="inverted_cdf")  # no interpolation towards inf
    point = factors(np.arange(windows))
    return {b: {"factor": round(float(point[i]), 2), "ci": [round(float(low[i]), 2), round(float(high[i]), 2)],
                "censored": round(float(np.isinf(boot[:, i]).mean()), 3)}
            for i, b in enumerate(config.hybrid_budgets)}


def sampler_suffix(curve: str) -> str:
    """`IN_TREE`, `RESAMPLED` or "" (sampling: search) for a curve name such as `hybrid in-tree`."""
    return next((suffix for suffix in (IN_TREE, RESAMPLED) if curve.endswith(suffix)), "")


def curve_rewards(rows: list[dict], windows: list[str], curve: str) -> tuple[list[int], np.ndarray]:
    """The curve's budgets and its samples' mean reward per (window, budget)."""
    by = {(r["series"], int(r["budget"])): r["reward"] for r in rows if r["curve"] == curve}
    budgets = sorted({b for w, b in by if w in windows})
    return budgets, np.array([[by[w, b] for b in budgets] for w in windows])


def plot_curves(rows: list[dict], path: Path, rng: np.random.Generator, n_boot: int = 2000) -> None:
    """One panel per series (mean over its windows), and one of every window's reward minus MC-only's
    at the reference budget with the same sampler, with a bootstrap 95% band over windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = list(dict.fromkeys(r["series"] for r in rows))
    series = list(dict.fromkeys(series_of(w) for w in windows))
    curves = list(dict.fromkeys(r["curve"] for r in rows if r["curve"]))  # MC-only, hybrid (and in-tree ones)
    style = {c: {"linestyle": "--" if c.endswith(IN_TREE) else ":" if c.endswith(RESAMPLED) else "-",
                 "color": "C1" if c.startswith("hybrid") else "C0"} for c in curves}
    fig, axes = plt.subplots(1, len(series) + 1, figsize=(3.4 * (len(series) + 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], series):
        own = [w for w in windows if series_of(w) == name]
        for curve in curves:
            budgets, rewards = curve_rewards(rows, own, curve)
            if budgets:
                ax.plot(budgets, rewards.mean(0), marker="o", label=curve, **style[curve])
        base = np.mean([r["reward"] for r in rows if r["series"] in own and r["method"] == "base sampling"])
        ax.axhline(base, color="grey", linestyle=":", label="base sampling")
        ax.set_title(name if len(own) == 1 else f"{name} ({len(own)} windows)")
    ax = axes[0][-1]
    mc_budgets = sorted({int(r["budget"]) for r in rows if r["curve"].startswith("MC-only")})
    for curve in curves:
        budgets, rewards = curve_rewards(rows, windows, curve)
        _, mc = curve_rewards(rows, windows, "MC-only" + sampler_suffix(curve))
        if not mc.size:
            continue  # no MC-only curve with this sampler to measure against
        gaps = rewards - mc[:, -1:]  # minus MC-only at its largest budget, same sampler
        boot = bootstrap_means(gaps, rng, n_boot)
        ax.plot(budgets, gaps.mean(0), marker="o", label=curve, **style[curve])
        ax.fill_between(budgets, *np.percentile(boot, [2.5, 97.5], axis=0), alpha=0.2, color=style[curve]["color"])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(f"{len(windows)} windows, minus MC-only@{mc_budgets[-1]}")
    ax.set_ylabel("reward gap (95% bootstrap band)")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xticks(mc_budgets, [str(b) for b in mc_budgets])
        ax.tick_params(axis="x", labelrotation=45)  # 500 and 1000 overlap on a log axis otherwise
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("rollouts")
    axes[0][0].set_ylabel("mean reward of samples")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- output ------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV; a column some rows lack (an earlier run's, resumed) is left empty there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def budget_reaching(budgets: list[int], rising: np.ndarray, value: float) -> float:
    """The budget at which a rising curve (values at `budgets`) reaches `value`, interpolated linearly in
    log budget: `budgets[0]` if `value` is at or below the curve's start, inf if above its end. The curve is
    first made monotone (its running maximum), so a noisy dip cannot give two answers."""
    curve = np.maximum.accumulate(np.asarray(rising, dtype=float))
    if value <= curve[0]:
        return float(budgets[0])
    if value > curve[-1]:
        return float("inf")
    return float(np.exp(np.interp(value, curve, np.log(budgets))))


def mc_equivalent(rows: list[dict], key: str, value: float) -> float:
    """The MC-only budget at which its mean `key` (falling with budget, e.g. TV) would equal `value`
    (log-log interpolation of its curve); MC-only's smallest budget if `value` is no better than it."""
    budgets = sorted({r["rollouts"] for r in rows if r["variant"] == "MC-only"})
    curve = np.array([np.mean([r[key] for r in rows if r["variant"] == "MC-only" and r["rollouts"] == b])
                      for b in budgets])
    return budget_reaching(budgets, -np.log(curve), -np.log(value))


def toy_summary(rows: list[dict]) -> str:
    """Per variant and budget, mean ± sd over seeds; `share`: (E_q[r] − E_p[r]) / (E_π*[r] − E_p[r])."""
    keys = ("tv_search_sampler", "tv_tree_sampler", "tv_resampled", "root_error", "root_bias", "root_bias_is",
            "share_search_sampler", "share_tree_sampler", "share_resampled")
    lines = ["| variant | rollouts | TV (sampling: search) | MC-only budget with this TV | TV (in-tree) | "
             "TV (resampled) | root error | root bias: V̂ | root bias: IS | share (search) | share (in-tree) | "
             "share (resampled) |",
             "|---" * 12 + "|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for budget in sorted({r["rollouts"] for r in rows}):
            sel = [r for r in rows if r["variant"] == variant and r["rollouts"] == budget]
            tv, tree_tv, resampled_tv, root, bias, bias_is, share, tree_share, resampled_share = [
                f"{np.mean([r[k] for r in sel]):.3g} ± {np.std([r[k] for r in sel]):.2g}" for k in keys]
            equivalent = mc_equivalent(rows, "tv_search_sampler", np.mean([r["tv_search_sampler"] for r in sel]))
            ratio = f"{equivalent:.0f} ({equivalent / budget:.1f}x)" if np.isfinite(equivalent) else "> all"
            cells = [variant, budget, tv, ratio, tree_tv, resampled_tv, root, bias, bias_is, share, tree_share,
                     resampled_share]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


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


def read_rows(path: Path, text_columns: tuple[str, ...] = ("series", "method", "curve", "proposal")) -> list[dict]:
    """real.csv back as rows (numbers parsed, empty cells NaN), for `--summarise` after an interrupted run."""
    rows = []
    for row in csv.DictReader(path.open()):
        rows.append({k: v if k in text_columns else float(v or "nan") for k, v in row.items()})
    return rows


def earlier_rows(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path, **read_kwargs) -> list[dict]:
    """The rows of `path` when `--resume` or `--summarise` asks for them (a clear error if it is missing), else []."""
    if not (args.resume or args.summarise):
        return []
    if not path.is_file():
        parser.error(f"--{'resume' if args.resume else 'summarise'} needs an earlier run's rows: no file {path}")
    return read_rows(path, **read_kwargs)


def write_summary(path: Path, parts: list[str]) -> None:
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT_DIR / "benchmarks/configs/amortisation.yaml")
    parser.add_argument("--part", choices=("toy", "real", "all"), default="all")
    parser.add_argument("--summarise", action="store_true", help="rebuild real.md and the plot from real.csv")
    parser.add_argument("--head-rows-only", nargs="?", type=Path, const=True, metavar="REAL_CSV",
                        help="re-run only the rows that read the head; take the others from REAL_CSV (default: the "
                             "output_dir's real.csv), e.g. another head's run on the same windows")
    parser.add_argument("--resume", action="store_true",
                        help="keep every row of the output_dir's real.csv and run only the missing ones")
    args = parser.parse_args(argv)
    if args.resume and args.head_rows_only:
        parser.error("--resume and --head-rows-only both choose the rows to keep: give one")
    config = load_config(args.config, AmortisationConfig)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = f"# Amortisation benchmark ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)\n"
    if args.part in ("toy", "all"):
        write_summary(out / "toy.md", [header, "## Exact toy\n", toy_summary(run_toy(config.toy, out))])
    if args.part in ("real", "all"):
        if args.summarise:
            rows = read_rows(out / "real.csv")
        else:
            reference = out / "real.csv" if args.head_rows_only is True or args.resume else args.head_rows_only
            if reference is not None and not reference.is_file():
                parser.error(f"--{'resume' if args.resume else 'head-rows-only'} needs an earlier run's rows: "
                             f"no file {reference}")
            keep = read_rows(reference) if reference is not None else None
            rows = run_real(config.real, out, keep, keep_head_rows=args.resume)
        plot_curves(rows, out / "reward_vs_rollouts.png", np.random.default_rng(0), config.real.bootstrap)
        factors = []
        if config.real.search_sampler:
            factors.append(f"Amortisation factor (sampling: search): "
                           f"{amortisation_factor(rows, config.real, np.random.default_rng(0))}")
        for suffix in (IN_TREE, RESAMPLED):
            if any(r["curve"].endswith(suffix) for r in rows):
                factors.append(f"\nAmortisation factor (samples {suffix.strip()}): "
                               f"{amortisation_factor(rows, config.real, np.random.default_rng(0), suffix)}")
        if config.real.in_tree and all(np.isfinite(r.get("draws_ess", np.nan)) for r in rows
                                       if r["curve"].endswith(RESAMPLED)):
            ratios = ess_ratios(rows, config.real, np.random.default_rng(0))
            plot_ess(rows, config.real, ratios["factor"], out / "ess_vs_rollouts.png", np.random.default_rng(0))
            factors.append(f"\nEffective samples of the draws (ratios, geometric mean [95% CI] over windows; "
                           f"plot: ess_vs_rollouts.png): {ratios}")
        if any(r["curve"].endswith(RESAMPLED) for r in rows):
            factors.append(f"\nIS log Z error against maxent_ts@{config.real.budgets[-1]} (mean [95% CI] over "
                           f"windows): {is_log_z_errors(rows, config.real, np.random.default_rng(0))}")
        write_summary(out / "real.md", [header, "## Mean over the held-out windows\n", method_means(rows), "",
                                             "## Held-out windows\n", real_summary(rows), "", *factors])
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
