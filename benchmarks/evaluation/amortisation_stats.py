"""The amortisation benchmark's statistics and plots: the amortisation factor and ESS ratios with bootstrap
intervals over windows, the IS log Z errors, and the curves against rollouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.evaluation.amortisation_real import IN_TREE, RESAMPLED, RealPart, series_of


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


def sampler_suffix(curve: str) -> str:
    """`IN_TREE`, `RESAMPLED` or "" (sampling: search) for a curve name such as `hybrid in-tree`."""
    return next((suffix for suffix in (IN_TREE, RESAMPLED) if curve.endswith(suffix)), "")


def curve_rewards(rows: list[dict], windows: list[str], curve: str) -> tuple[list[int], np.ndarray]:
    """The curve's budgets and its samples' mean reward per (window, budget)."""
    by = {(r["series"], int(r["budget"])): r["reward"] for r in rows if r["curve"] == curve}
    budgets = sorted({b for w, b in by if w in windows})
    return budgets, np.array([[by[w, b] for b in budgets] for w in windows])


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
