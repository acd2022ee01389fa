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

from benchmarks.evaluation.amortisation_real import RealPart, heldout_windows
from benchmarks.evaluation.head_choice import METRICS, PRIOR, choice_summary, choose_head, index_rows, paired_scores
from benchmarks.evaluation.head_choice import summary as choice_table
from benchmarks.evaluation.tables import earlier_rows, write_csv
from sadt.cli import CommandParser, run_command
from sadt.config import load_config, to_dict
from sadt.head_io import warn_if_other_lam
from search.forecast_task import LOOK_AHEAD_REWARD, PARAMETER_FREE_VALUES

ROOT_DIR = Path(__file__).resolve().parents[1]


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
    device: str = "cpu"  # torch device of the LM and the heads (a LoRA head's own adapted LM too)
    dtype: str = "float32"

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
    harvest's (`search.harvest.between_windows`)."""
    from search.harvest import between_windows

    return between_windows(name, config.context_length, config.horizon, config.harvest_windows_per_series,
                           config.windows_per_series)


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
    from sadt.head_io import load_search_head
    from sadt.importance import importance_summary
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.ancestral import sample_policy
    from search.forecast_task import ForecastTask

    lm, tokenizer = load_base_lm(dtype=config.dtype, device=config.device)
    codec = Codec(tokenizer)
    heads, head_lms = {}, {}  # a LoRA head's P_F draws through its own backend (frozen prior, adapted states)
    for name, path in head_paths(config).items():
        if path in PARAMETER_FREE_VALUES:  # bound to each window by `task.value`
            heads[name] = path
            continue
        loaded = load_search_head(path, lm_fingerprint(), to_dict(codec.config), device=config.device)
        heads[name], head_lms[name] = loaded.value_head, loaded.lm or lm
        warn_if_other_lam(loaded.card.lam, config.lam, f"head {path}")
    done = {(r["series"], r["proposal"]): r for r in keep}
    rows = []
    for label, context in tqdm(windows_of(config), desc=f"{config.windows} windows", unit="window"):
        task = ForecastTask.build(codec, context, config.horizon)
        for name, head, scale in proposals(config):
            if (label, name) in done:
                rows.append(done[label, name])
                continue
            start = time.perf_counter()
            draws = sample_policy(head_lms.get(head, lm), task, n_samples=config.n_draws, batch_size=config.batch_size,
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
    text = choice_table(paired_scores(rows, config.bootstrap, np.random.default_rng(0)), header)
    if config.incumbent is not None:
        choice, duels = choose_head(rows, config.incumbent, config.bootstrap, np.random.default_rng(0))
        text += choice_summary(choice, duels, config.incumbent)
    (out / "proposals.md").write_text(text)
    plot(rows, out / "proposals.png")
    print((out / "proposals.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
