"""Means over windows with bootstrap 95% intervals, each sampler paired with the i.i.d. draws of its rollout policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bootstrap_interval(per_window: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95% percentile interval of the mean over windows (resampling windows)."""
    means = per_window[rng.integers(0, per_window.size, (n_boot, per_window.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def grouped(rows: list[dict]) -> dict[tuple[float, str, float], dict[str, dict]]:
    """(λ, sampler, budget) -> window -> row, a window's repeats (runs with other seeds) merged into one row."""
    runs: dict[tuple[float, str, float], dict[str, list[dict]]] = {}
    for r in rows:
        runs.setdefault((float(r["lam"]), str(r["sampler"]), float(r["budget"])), {}) \
            .setdefault(str(r["window"]), []).append(r)
    return {key: {window: merged(repeats) for window, repeats in by_window.items()}
            for key, by_window in runs.items()}


def repeat_of(row: dict) -> int:
    """The row's run within its window (0 for rows written before `repeats` existed; a CSV gives 1 back as 1.0)."""
    return int(float(row.get("repeat", 0)))


GEOMETRIC = ("ess", "ess_per_ktoken")  # averaged as logs: the paired ratios are geometric means


def merged(repeats: list[dict]) -> dict:
    """One window's runs as one row: ESS and ESS per token as geometric means over the runs, the log Z error as
    the mean |log Ẑ − log Z_ref| (its sign is lost), every other number (k̂, tokens, CRPS) as the mean."""
    if len(repeats) == 1:
        return repeats[0]
    row = dict(repeats[0])
    for column, value in row.items():
        if isinstance(value, str) or column == "repeat":
            continue
        values = np.array([float(r[column]) for r in repeats])
        if column in GEOMETRIC:
            row[column] = float(np.exp(np.log(np.maximum(values, 1e-12)).mean()))
        elif column == "log_z_error":
            row[column] = float(np.abs(values).mean())
        else:
            row[column] = float(values.mean())
    row["repeats"] = len(repeats)
    return row


def summary_table(rows: list[dict], baselines: dict[str, str | None], n_boot: int = 2000) -> str:
    """A markdown table: per λ, sampler and budget, means over windows [95% CI]: tokens, ESS (geometric),
    ESS per 1000 tokens against the rollout policy's i.i.d. draws (paired ratio, geometric), |log Z error|,
    median k̂ and the share of windows above 0.7, CRPS of resampled forecasts."""
    rng = np.random.default_rng(0)
    groups = grouped(rows)
    lines = ["| λ | sampler | budget | tokens | ESS | ESS/ktok vs i.i.d. rollout policy | \\|log Z err\\| | "
             "k̂ median (> 0.7) | CRPS |", "|---|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(baselines)}  # the config's order within each (λ, budget)
    for (lam, name, budget), by_window in sorted(groups.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][2], order.get(kv[0][1], 0))):
        windows = sorted(by_window)
        ess = np.log(np.array([max(by_window[w]["ess"], 1e-12) for w in windows]))
        err = np.abs(np.array([by_window[w]["log_z_error"] for w in windows]))
        khat = np.array([by_window[w]["khat"] for w in windows])
        crps = np.array([by_window[w]["crps"] for w in windows])
        tokens = np.mean([by_window[w]["tokens"] for w in windows])
        lo, hi = bootstrap_interval(ess, rng, n_boot)
        elo, ehi = bootstrap_interval(err, rng, n_boot)
        paired = "–"
        base = groups.get((lam, baselines.get(name) or "", budget))
        if base is not None:
            shared = [w for w in windows if w in base]
            log_ratio = np.log(np.array([by_window[w]["ess_per_ktoken"] / base[w]["ess_per_ktoken"] for w in shared]))
            plo, phi = bootstrap_interval(log_ratio, rng, n_boot)
            paired = f"{np.exp(log_ratio.mean()):.2f} [{np.exp(plo):.2f}, {np.exp(phi):.2f}]"
        finite = khat[np.isfinite(khat)]
        crps_cell = f"{np.nanmean(crps):.3f}" if np.isfinite(crps).any() else "–"  # a text task has no truth
        lines.append(
            f"| {lam:g} | {name} | {budget:g} | {tokens:,.0f} | {np.exp(ess.mean()):.1f} [{np.exp(lo):.1f}, "
            f"{np.exp(hi):.1f}] | {paired} | {err.mean():.2f} [{elo:.2f}, {ehi:.2f}] | "
            f"{np.median(finite) if finite.size else float('nan'):.2f} ({(finite > 0.7).mean():.0%}) | "
            f"{crps_cell} |")
    runs = sorted({int(r.get("repeats", 1)) for by_window in groups.values() for r in by_window.values()})
    repeats = f"; {'-'.join(map(str, runs))} runs a window, merged (`merged`)" if runs != [1] else ""
    return "\n".join(lines) + (f"\n\n{len({r['window'] for r in rows})} windows{repeats}; intervals: bootstrap "
                               "over windows.")


def plot_ess(rows: list[dict], path: Path) -> None:
    """ESS (geometric mean over windows) and mean |log Z error| against mean tokens, a line per sampler, per λ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = grouped(rows)
    lams = sorted({lam for lam, _, _ in groups})
    fig, axes = plt.subplots(2, len(lams), figsize=(5 * len(lams), 7), squeeze=False)
    for column, lam in enumerate(lams):
        for name in dict.fromkeys(n for la, n, _ in groups if la == lam):
            budgets = sorted(b for la, n, b in groups if la == lam and n == name)
            cells = [list(groups[lam, name, b].values()) for b in budgets]
            tokens = [np.mean([r["tokens"] for r in c]) for c in cells]
            ess = [np.exp(np.mean(np.log([max(r["ess"], 1e-12) for r in c]))) for c in cells]
            err = [np.mean([abs(r["log_z_error"]) for r in c]) for c in cells]
            axes[0, column].plot(tokens, ess, "o-", label=name)
            axes[1, column].plot(tokens, err, "o-", label=name)
        axes[0, column].set(title=f"λ = {lam:g}", xscale="log", yscale="log", ylabel="draws' ESS (geometric mean)")
        axes[1, column].set(xscale="log", yscale="log", xlabel="LM tokens", ylabel="|log Ẑ − log Z_ref| (mean)")
        axes[0, column].legend(fontsize=7)
        budgets = sorted({b for la, _, b in groups if la == lam})
        for ax in axes[:, column]:  # ticks at the budgets: a log axis's own minor labels overlap
            ax.set_xticks(budgets, [f"{b / 1000:g}k" for b in budgets])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired(rows: list[dict], lam: float, budget: float, a: str, b: str, rng: np.random.Generator,
           n_boot: int = 2000) -> dict:
    """Sampler `a` against `b` on the windows both ran: ESS per token as a geometric-mean ratio a/b, and
    |log Z error| as a mean difference a − b, each with a bootstrap 95% interval over windows."""
    groups = grouped(rows)
    first, second = groups.get((lam, a, budget), {}), groups.get((lam, b, budget), {})
    shared = sorted(set(first) & set(second))
    if not shared:
        return {"windows": 0}
    log_ratio = np.log([first[w]["ess_per_ktoken"] / second[w]["ess_per_ktoken"] for w in shared])
    error_gap = np.array([abs(first[w]["log_z_error"]) - abs(second[w]["log_z_error"]) for w in shared])
    lo, hi = bootstrap_interval(log_ratio, rng, n_boot)
    elo, ehi = bootstrap_interval(error_gap, rng, n_boot)
    return {"windows": len(shared), "ess_ratio": float(np.exp(log_ratio.mean())), "ess_low": float(np.exp(lo)),
            "ess_high": float(np.exp(hi)), "error_gap": float(error_gap.mean()), "error_low": elo, "error_high": ehi,
            "above": int((log_ratio > 0).sum())}


def best(rows: list[dict], lam: float, budget: float, names: list[str]) -> str:
    """Of `names`, the sampler with the lowest mean |log Z error| at (λ, budget): ESS alone can crown a sampler
    that missed a mode (plain SMC's few distinct particles)."""
    groups = grouped(rows)

    def error(name: str) -> float:
        cells = groups.get((lam, name, budget), {})
        return float(np.mean([abs(r["log_z_error"]) for r in cells.values()])) if cells else np.inf

    return min(names, key=error)


def headline(rows: list[dict], heads: dict[str, bool], n_boot: int = 2000) -> str:
    """Per λ and budget: the best sampler with a head against the best without, paired. For i.i.d. draws ESS
    grows in proportion to tokens, so the ESS-per-token ratio is the tokens the sampler without a head needs
    to match the one with it (the amortisation factor), when the sampler without a head is i.i.d."""
    if all(heads.values()) or not any(heads.values()):
        return "(needs samplers both with and without a head)"
    rng = np.random.default_rng(0)
    lines = ["| λ | budget | best with a head | best without | ESS/token ratio [95% CI] (windows above 1) | "
             "\\|log Z err\\| with − without [95% CI] |", "|---|---|---|---|---|---|"]
    for lam, budget in sorted({(la, b) for la, _, b in grouped(rows)}):
        with_head = best(rows, lam, budget, [n for n, h in heads.items() if h])
        without = best(rows, lam, budget, [n for n, h in heads.items() if not h])
        p = paired(rows, lam, budget, with_head, without, rng, n_boot)
        if p["windows"]:
            lines.append(f"| {lam:g} | {budget:g} | {with_head} | {without} | {pair_cells(p)} |")
    return "\n".join(lines)


def pair_cells(p: dict) -> str:
    """`paired`'s result as two table cells: the ESS-per-token ratio and the |log Z error| gap."""
    return (f"{p['ess_ratio']:.2f} [{p['ess_low']:.2f}, {p['ess_high']:.2f}] ({p['above']}/{p['windows']}) | "
            f"{p['error_gap']:+.2f} [{p['error_low']:+.2f}, {p['error_high']:+.2f}]")


def pairs_table(rows: list[dict], pairs: list[tuple[str, str]], n_boot: int = 2000) -> str:
    """Chosen pairs of samplers (a, b), paired over windows at every λ and budget both ran."""
    rng = np.random.default_rng(0)
    lines = ["| λ | budget | a | b | ESS/token a / b [95% CI] (windows above 1) | \\|log Z err\\| a − b [95% CI] |",
             "|---|---|---|---|---|---|"]
    for lam, budget in sorted({(la, b) for la, _, b in grouped(rows)}):
        for a, b in pairs:
            p = paired(rows, lam, budget, a, b, rng, n_boot)
            if p["windows"]:
                lines.append(f"| {lam:g} | {budget:g} | {a} | {b} | {pair_cells(p)} |")
    return "\n".join(lines)


def noise_floor_table(rows: list[dict], n_boot: int = 2000) -> str:
    """Each sampler's second run (repeat 1) against its first (repeat 0), paired over windows as `pairs_table`
    pairs two samplers: the spread a one-run-a-window ratio shows between a sampler and itself."""
    rng = np.random.default_rng(0)
    first = [r for r in rows if repeat_of(r) == 0]
    second = [{**r, "sampler": f"{r['sampler']} #1"} for r in rows if repeat_of(r) == 1]
    lines = ["| λ | budget | sampler | ESS/token run 1 / run 0 [95% CI] (windows above 1) | "
             "\\|log Z err\\| run 1 − run 0 [95% CI] |", "|---|---|---|---|---|"]
    for lam, name, budget in sorted({(float(r["lam"]), str(r["sampler"]), float(r["budget"])) for r in second}):
        p = paired(first + second, lam, budget, name, name.removesuffix(" #1"), rng, n_boot)
        if p["windows"]:
            lines.append(f"| {lam:g} | {budget:g} | {name.removesuffix(' #1')} | {pair_cells(p)} |")
    return "\n".join(lines)
