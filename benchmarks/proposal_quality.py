"""Is the head's P_F a better proposal for π* than the prior p? The hybrid can gain no more than that.

    python benchmarks/proposal_quality.py --config benchmarks/configs/proposal_heldout_soft_head_lam15.yaml

The hybrid's rollouts below the tree come from P_F(a|s) ∝ p(a|s) exp(s·λ Q_φ(s, a)), and every draw of
the search is weighted by p e^{λr} / q. If P_F covers π* no better than p does, neither the root
estimate nor the resampled samples can improve, whatever the tree does above. So, per window, N
forecasts are drawn from each proposal (no tree) and scored by `sadt.importance.importance_summary`:
ESS / N, KL(π*‖q) (what the importance-weighted estimates pay for), KL(q‖π*) (what TB trains
down), the proposal's own mean reward and V_IS. Proposals: p, P_F of the trained head at each guide
scale s (s = 1 is what the hybrid uses) and, optionally, P_F of the parameter-free look-ahead
reward Q = R⁺(s·a).

Windows: `validation` takes history windows halfway between the harvest's training windows
(`harvest_windows_per_series` of them, `search.harvest.task_set`), seen by neither the head nor the
held-out benchmark, so a fix may be chosen there; `generated` takes `generated_windows` synthetic
contexts (`data.generator`, seed `generator_seed`) from index `generated_first` on, past every
harvested one, so heads trained on generated contexts can be compared on contexts none of them saw;
`heldout` takes the amortisation benchmark's windows (`benchmarks/amortisation.py`, LLMTime's test
part) to confirm a choice, never to make it.

Choosing a head: with `incumbent` (a proposal's label, e.g. "P_F soft32 s=1"), proposals.md also
gives every other proposal's paired ESS ratio to it (geometric mean over windows, bootstrap 95%
interval) and the choice: the challenger with the highest ratio among those whose interval lies
above 1, else the incumbent. Run it on `validation` or `generated` windows only.

Writes `<output_dir>/proposals.csv` (after every window; `--resume` runs only the missing rows),
`proposals.md` (means over windows with bootstrap 95% intervals, and each proposal against p on the
same windows) and `proposals.png`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT_DIR = Path(__file__).resolve().parents[1]

from benchmarks.amortisation import RealPart, earlier_rows, heldout_windows, write_csv  # noqa: E402
from sadt.cli import CommandParser, run_command  # noqa: E402
from sadt.config import load_config, to_dict  # noqa: E402
from sadt.head_io import warn_if_other_lam  # noqa: E402
from search.forecast_task import LOOK_AHEAD_REWARD, PARAMETER_FREE_VALUES  # noqa: E402

PRIOR = "p (prior)"
METRICS = ("ess_fraction", "kl_target_proposal", "kl_proposal_target", "proposal_reward", "value_is")


@dataclass(frozen=True)
class ProposalConfig:
    output_dir: str = "benchmarks/results/proposal/validation"
    windows: str = "validation"  # "validation" (between the harvest's windows), "generated" or "heldout" (test part)
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Sunspots", "Wine", "Wooly"])
    windows_per_series: int = 2
    harvest_windows_per_series: int = 8  # the head's training windows (benchmarks/experiments/harvest/recipe.yaml)
    generated_windows: int = 13  # windows: generated: this many synthetic contexts ...
    generator_seed: int = 0
    generated_first: int = 1000  # ... from this index on (the generated harvest used indices below `generated`)
    context_length: int = 48
    horizon: int = 12
    head: str | None = "checkpoints/heads/soft_ahead_lam15"  # None: only `other_heads` (and p)
    # name -> a head's folder or a parameter-free value (forecast_task.PARAMETER_FREE_VALUES), each at every guide scale
    other_heads: dict[str, str] = field(default_factory=dict)
    lam: float = 5.0
    n_draws: int = 96
    batch_size: int = 48
    seed: int = 1
    guide_scales: list[float] = field(default_factory=lambda: [0.5, 1.0])  # s of P_F ∝ p exp(s·λ·Q_φ)
    look_ahead_reward: bool = True  # also P_F of the parameter-free Q = R⁺(s·a), at s = 1
    bootstrap: int = 2000
    incumbent: str | None = None  # a proposal's label: challengers must beat it, paired (`choose_head`)

    def __post_init__(self) -> None:
        if self.windows not in ("validation", "generated", "heldout"):
            raise ValueError(f"proposal `windows` must be 'validation', 'generated' or 'heldout', got {self.windows!r}")
        if self.generated_windows < 1 or self.generated_first < 0:
            raise ValueError("need generated_windows >= 1 and generated_first >= 0")
        if self.n_draws < 2 or self.windows_per_series < 1 or self.harvest_windows_per_series < 2:
            raise ValueError("need n_draws >= 2, windows_per_series >= 1 and harvest_windows_per_series >= 2")
        if not all(s > 0 for s in self.guide_scales):
            raise ValueError(f"proposal `guide_scales` must be > 0 (p itself is always run), got {self.guide_scales}")


def validation_windows(name: str, config: ProposalConfig) -> list[tuple[str, np.ndarray]]:
    """(label, context) of `windows_per_series` windows whose contexts end halfway between two of the
    harvest's (`search.harvest.task_set` spaces its ends evenly over the history, test part excluded)."""
    from data.series import load_builtin

    history = load_builtin(name).context
    first, last = config.context_length, history.size - config.horizon
    if last < first:
        raise ValueError(f"{name}: history of {history.size} steps is too short for the windows")
    midpoints = np.linspace(first, last, 2 * config.harvest_windows_per_series - 1)[1::2].round().astype(int)
    chosen = np.linspace(0, len(midpoints) - 1, min(config.windows_per_series, len(midpoints))).round().astype(int)
    return [(f"{name}@{end}", history[end - config.context_length : end]) for end in midpoints[chosen]]


def generated_windows(config: ProposalConfig) -> list[tuple[str, np.ndarray]]:
    """(label, context) of the generator's series `generated_first`, `generated_first + 1`, ..."""
    from data.generator import generate_one

    indices = range(config.generated_first, config.generated_first + config.generated_windows)
    series = [generate_one(config.generator_seed, i, config.context_length) for i in indices]
    return [(s.name, s.values) for s in series]


def windows_of(config: ProposalConfig) -> list[tuple[str, np.ndarray]]:
    if config.windows == "validation":
        return [w for name in config.series for w in validation_windows(name, config)]
    if config.windows == "generated":
        return generated_windows(config)
    part = RealPart(series=config.series, context_length=config.context_length, horizon=config.horizon,
                    windows_per_series=config.windows_per_series)
    return [(label, context) for name in config.series for label, context, _ in heldout_windows(name, part)]


def head_paths(config: ProposalConfig) -> dict[str, str]:
    """name -> head folder or parameter-free value of every head compared: "head" (unless None), then `other_heads`."""
    return {**({} if config.head is None else {"head": config.head}), **config.other_heads}


def proposals(config: ProposalConfig) -> list[tuple[str, str | None, float]]:
    """(label, head: "head" / a name of `other_heads` / LOOK_AHEAD_REWARD / None, guide scale s) for every proposal."""
    out = [(PRIOR, None, 0.0)] + [(f"P_F {name} s={s:g}", name, s)
                                  for name in head_paths(config) for s in config.guide_scales]
    if config.look_ahead_reward:
        out.append(("P_F look-ahead R⁺ s=1", LOOK_AHEAD_REWARD, 1.0))
    return out


def run(config: ProposalConfig, out: Path, keep: list[dict]) -> list[dict]:
    from sadt.codec import Codec
    from sadt.head_io import load_value_head
    from sadt.importance import importance_summary
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.ancestral import sample_policy
    from search.forecast_task import ForecastTask

    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    heads = {}
    for name, path in head_paths(config).items():
        if path in PARAMETER_FREE_VALUES:  # bound to each window by `task.value`
            heads[name] = path
            continue
        heads[name], card = load_value_head(path, lm_fingerprint(), to_dict(codec.config))
        warn_if_other_lam(card.lam, config.lam, f"head {path}")
    done = {(r["series"], r["proposal"]): r for r in keep}
    rows = []
    for label, context in tqdm(windows_of(config), desc=f"{config.windows} windows", unit="window"):
        task = ForecastTask.build(codec, context, config.horizon)
        for name, head, scale in proposals(config):
            if (label, name) in done:
                rows.append(done[label, name])
                continue
            start = time.perf_counter()
            draws = sample_policy(lm, task, n_samples=config.n_draws, batch_size=config.batch_size,
                                  value_head=task.value(heads.get(head, head), config.lam),
                                  guide_lam=scale * config.lam, seed=config.seed, progress=False)
            rewards = task.reward_fn(draws.actions)
            log_w = draws.log_prior + config.lam * rewards - draws.log_proposal
            summary = importance_summary(log_w, rewards, config.lam)
            rows.append({"series": label, "proposal": name, "guide_scale": scale, "n_draws": config.n_draws,
                         "distinct": len({tuple(a) for a in draws.actions}), **summary,
                         "wall_s": time.perf_counter() - start})
            tqdm.write(f"{label:18s} {name:24s} ESS/N {summary['ess_fraction']:.3f}  KL(π*‖q) "
                       f"{summary['kl_target_proposal']:.3f}  KL(q‖π*) {summary['kl_proposal_target']:.3f}  "
                       f"E_q[r] {summary['proposal_reward']:7.3f}")
        # The earlier run's rows for windows not reached yet stay in the file: a second interruption loses nothing.
        ran = {(r["series"], r["proposal"]) for r in rows}
        write_csv(out / "proposals.csv", rows + [r for r in keep if (r["series"], r["proposal"]) not in ran])
    return rows


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


def plot(rows: list[dict], path: Path) -> None:
    """One panel per metric: each window's value per proposal (dots, a line per window) and the mean (black bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["proposal"] for r in rows))
    windows, by = index_rows(rows)
    titles = ("ESS / N (higher: closer to π*)", "KL(π*‖q) (lower)", "KL(q‖π*) (lower)",
              "E_q[r], the draws' mean reward")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    x = np.arange(len(names))
    for ax, metric, title in zip(axes, METRICS[:4], titles, strict=True):
        values = np.array([[by.get((w, n), {}).get(metric, np.nan) for n in names] for w in windows])
        for row in values:
            ax.plot(x, row, "-o", color="tab:blue", alpha=0.3, markersize=3)
        ax.plot(x, np.nanmean(values, axis=0), "_", color="k", markersize=28, markeredgewidth=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path,
                        default=ROOT_DIR / "benchmarks/configs/proposal_heldout_soft_head_lam15.yaml")
    parser.add_argument("--resume", action="store_true", help="keep the rows of the output_dir's proposals.csv")
    parser.add_argument("--summarise", action="store_true", help="rebuild proposals.md and the plot from the CSV")
    args = parser.parse_args(argv)
    config = load_config(args.config, ProposalConfig)
    labels = [label for label, _, _ in proposals(config)]
    if config.incumbent is not None and config.incumbent not in labels:  # before anything runs or is written
        parser.error(f"{args.config}: `incumbent` {config.incumbent!r} is none of the proposals {labels}")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep = earlier_rows(parser, args, out / "proposals.csv")
    rows = keep if args.summarise else run(config, out, keep)
    header = f"# Proposal quality on {config.windows} windows ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)"
    text = summary(paired_scores(rows, config.bootstrap, np.random.default_rng(0)), header)
    if config.incumbent is not None:
        choice, duels = choose_head(rows, config.incumbent, config.bootstrap, np.random.default_rng(0))
        text += choice_summary(choice, duels, config.incumbent)
    (out / "proposals.md").write_text(text)
    plot(rows, out / "proposals.png")
    print((out / "proposals.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
