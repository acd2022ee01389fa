"""Which head to ship: proposals scored against p and against each other on the same validation windows, paired,
with bootstrap intervals over windows, and the rule that replaces the incumbent head only when a challenger wins."""

from __future__ import annotations

import numpy as np

PRIOR = "p (prior)"
METRICS = ("ess_fraction", "kl_target_proposal", "kl_proposal_target", "proposal_reward", "value_is")


def index_rows(rows: list[dict]) -> tuple[list[str], dict[tuple[str, str], dict]]:
    """The windows in first-seen order, and each row by (window, proposal)."""
    return list(dict.fromkeys(r["series"] for r in rows)), {(r["series"], r["proposal"]): r for r in rows}


def paired_scores(rows: list[dict], n_boot: int, rng: np.random.Generator) -> list[dict]:
    """Per proposal and metric: the mean over windows and its difference from p on the same windows,
    each with a bootstrap 95% interval over windows."""
    windows, by = index_rows(rows)
    out = []
    for name in dict.fromkeys(r["proposal"] for r in rows):
        present = [w for w in windows if (w, name) in by and (w, PRIOR) in by]
        boot = rng.integers(0, len(present), (n_boot, len(present)))
        score = {"proposal": name, "windows": len(present)}
        for metric in METRICS:
            values = np.array([by[w, name][metric] for w in present])
            diff = values - np.array([by[w, PRIOR][metric] for w in present])
            score[metric] = float(values.mean())
            score[f"{metric}_ci"] = tuple(np.percentile(values[boot].mean(1), [2.5, 97.5]))
            score[f"{metric}_vs_p"] = float(diff.mean())
            score[f"{metric}_vs_p_ci"] = tuple(np.percentile(diff[boot].mean(1), [2.5, 97.5]))
        # The proposal's amortisation factor in effective samples per draw: ESS_q / ESS_p, geometric mean.
        score["ess_gain"], score["ess_gain_ci"], _ = ess_ratio(by, name, PRIOR, present, boot)
        out.append(score)
    return out


def ess_ratio(by: dict, name: str, baseline: str, windows: list[str], boot: np.ndarray
              ) -> tuple[float, tuple[float, float], int]:
    """exp(mean_w log(ESS_name(w) / ESS_baseline(w))) over `windows`, its bootstrap 95% interval (rows
    of `boot` index the windows) and the number of windows where `name` has more effective samples."""
    log_ratio = np.log([by[w, name]["ess_fraction"] / by[w, baseline]["ess_fraction"] for w in windows])
    interval = tuple(float(x) for x in np.exp(np.percentile(log_ratio[boot].mean(1), [2.5, 97.5])))
    return float(np.exp(log_ratio.mean())), interval, int((log_ratio > 0).sum())


def choose_head(rows: list[dict], incumbent: str, n_boot: int, rng: np.random.Generator
                ) -> tuple[str, list[dict]]:
    """Each challenger's paired ESS ratio to the incumbent, and the choice: the challenger with the
    highest ratio whose 95% interval lies above 1, else the incumbent (a lead that windows cannot
    separate from noise does not replace what ships)."""
    windows, by = index_rows(rows)
    if not any((w, incumbent) in by for w in windows):
        raise ValueError(f"`incumbent` {incumbent!r} is not a proposal of these rows "
                         f"({sorted({r['proposal'] for r in rows})})")
    duels = []
    for name in dict.fromkeys(r["proposal"] for r in rows):
        present = [w for w in windows if (w, name) in by and (w, incumbent) in by]
        if name in (incumbent, PRIOR) or not present:
            continue
        boot = rng.integers(0, len(present), (n_boot, len(present)))
        ratio, interval, above = ess_ratio(by, name, incumbent, present, boot)
        duels.append({"proposal": name, "windows": len(present), "ratio": ratio, "ci": interval, "above": above})
    separable = [d for d in duels if d["ci"][0] > 1.0]
    return (max(separable, key=lambda d: d["ratio"])["proposal"] if separable else incumbent), duels


def choice_summary(choice: str, duels: list[dict], incumbent: str) -> str:
    lines = ["", f"Against the incumbent {incumbent}, paired on the same windows (ESS ratio, geometric mean, "
             "bootstrap 95% interval; windows where the challenger has more effective samples):", "",
             "| challenger | windows | ESS / incumbent's | above |", "|---|---|---|---|"]
    lines += [f"| {d['proposal']} | {d['windows']} | {d['ratio']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}] "
              f"| {d['above']}/{d['windows']} |" for d in duels]
    lines += ["", f"Chosen: **{choice}** (the best challenger whose interval lies above 1, else the incumbent)."]
    return "\n".join(lines) + "\n"


def summary(scores: list[dict], header: str) -> str:
    names = {"ess_fraction": "ESS / N", "kl_target_proposal": "KL(π*‖q)", "kl_proposal_target": "KL(q‖π*)",
             "proposal_reward": "E_q[r]"}
    lines = [header, "", "Means over windows (bootstrap 95% interval); below each, the difference from p on the "
             "same windows. ESS_q / ESS_p: the geometric mean over windows of the proposal's effective samples "
             "per draw over p's.", "", "| proposal | windows | " + " | ".join(names.values()) + " | ESS_q / ESS_p |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for s in scores:
        cells = [f"{s[m]:.3f} [{s[m + '_ci'][0]:.3f}, {s[m + '_ci'][1]:.3f}]" for m in names]
        gain = f"{s['ess_gain']:.2f} [{s['ess_gain_ci'][0]:.2f}, {s['ess_gain_ci'][1]:.2f}]"
        lines.append(f"| {s['proposal']} | {s['windows']} | " + " | ".join(cells) + f" | {gain} |")
        if s["proposal"] != PRIOR:
            cells = [f"{s[m + '_vs_p']:+.3f} [{s[m + '_vs_p_ci'][0]:+.3f}, {s[m + '_vs_p_ci'][1]:+.3f}]"
                     for m in names]
            lines.append("| − p, same windows | | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"
