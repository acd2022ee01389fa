"""How much can any proposal gain over p at a given λ? p's own coverage of π*_λ, from stored draws from p.

    python benchmarks/tilt_room.py --config benchmarks/configs/tilt_room.yaml

Resampling N draws of a proposal q gives about ESS effective samples of π*, so a perfect proposal
(q = π*, ESS = N) gains at most N / ESS_p over p's draws in samples per rollout, whatever the head.
For each prompt of the buffers' draws from p (source `prior_sample`, `search.harvest` with
`sampler: prior`; rewards are stored raw, so one buffer serves every λ) and each λ of the grid,
`sadt.importance.importance_summary` with log w_i = λ r_i gives

    ESS_p / N     and its ceiling N / ESS_p (capped at N: N draws cannot see a smaller ESS),
    KL(π*‖p)      the divergence a head must remove,
    E_π*[r] − E_p[r]   the reward gap between the target and the prior.

Beside it, the ceiling from the first half of each prompt's draws: where it is close to the full
one, the estimate is not limited by the number of draws; where it is lower, the full one is a lower
bound. (The Gaussian form exp(λ²σ²) is no use here: the spectral reward is bounded above with a long
lower tail, which inflates σ while exp(λr) reads only the upper tail.)

Writes `<output_dir>/room.csv` (one row per prompt and λ), `room.md` (medians and quartiles over
prompts per λ) and `room.png` (the ceiling against λ, the claim's 10× marked).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.evaluation.tables import write_csv
from sadt.cli import CommandParser, run_command
from sadt.config import load_config
from sadt.importance import importance_summary

ROOT_DIR = Path(__file__).resolve().parents[1]

CLAIMED_FACTOR = 10.0  # hybrid@200 ≈ MC@2000


@dataclass(frozen=True)
class RoomConfig:
    output_dir: str = "benchmarks/results/tilt_room"
    buffers: list[str] = field(default_factory=lambda: ["data/buffers/recipe_prior.h5"])
    lams: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0])

    def __post_init__(self) -> None:
        if not self.buffers:
            raise ValueError("tilt_room needs at least one buffer with draws from p")
        if not self.lams or not all(lam > 0 for lam in self.lams):
            raise ValueError(f"`lams` must be a non-empty list of values > 0, got {self.lams}")


def prior_rewards(buffers: list[str]) -> dict[str, np.ndarray]:
    """Prompt key -> the rewards of its draws from p, pooled over the buffers."""
    from data.buffer import SOURCES, read_buffer

    by_key: dict[str, list[float]] = {}
    for path in buffers:
        buffer = read_buffer(path)
        a = buffer.arrays
        keys = buffer.prompt_keys()
        drawn = a["source"] == SOURCES["prior_sample"]
        for row, reward in zip(buffer.prompt_rows[drawn], a["reward"][drawn]):
            by_key.setdefault(keys[row], []).append(float(reward))
    if not by_key:
        raise ValueError(f"no draws from p (source 'prior_sample') in {buffers}: harvest with `sampler: prior`")
    return {key: np.asarray(rewards) for key, rewards in by_key.items()}


def room_rows(rewards: dict[str, np.ndarray], lams: list[float]) -> list[dict]:
    """Per prompt and λ: p's coverage of π*_λ from its draws (module docstring)."""
    rows = []
    for key, r in rewards.items():
        for lam in lams:
            s = importance_summary(lam * r, r, lam)  # log w = log p + λ r − log p
            rows.append({
                "prompt": key, "lam": lam, "draws": len(r), "ess_fraction": s["ess_fraction"],
                "ceiling": 1.0 / s["ess_fraction"], "ceiling_half_draws": half_draw_ceiling(r, lam),
                "kl_target_prior": s["kl_target_proposal"], "reward_gap": s["target_reward"] - s["proposal_reward"],
            })
    return rows


def half_draw_ceiling(rewards: np.ndarray, lam: float) -> float:
    """N / ESS_p from the first half of the draws: the check that the full estimate is not draw-limited."""
    half = rewards[: len(rewards) // 2]
    return 1.0 / importance_summary(lam * half, half, lam)["ess_fraction"] if len(half) >= 2 else float("nan")


def summarise(rows: list[dict]) -> list[dict]:
    """Median and quartiles over prompts, per λ, of every measure."""
    measures = ("ess_fraction", "ceiling", "ceiling_half_draws", "kl_target_prior", "reward_gap")
    out = []
    for lam in sorted({r["lam"] for r in rows}):
        at = [r for r in rows if r["lam"] == lam]
        entry = {"lam": lam, "prompts": len(at), "draws": int(np.median([r["draws"] for r in at]))}
        for m in measures:
            q1, median, q3 = np.percentile([r[m] for r in at], [25, 50, 75])
            entry.update({m: float(median), f"{m}_q1": float(q1), f"{m}_q3": float(q3)})
        entry["share_above_claim"] = float(np.mean([r["ceiling"] >= CLAIMED_FACTOR for r in at]))
        out.append(entry)
    return out


def _cell(score: dict, measure: str, fmt: str) -> str:
    """"median [q1, q3]" of one measure."""
    return f"{score[measure]:{fmt}} [{score[measure + '_q1']:{fmt}}, {score[measure + '_q3']:{fmt}}]"


def report(scores: list[dict], header: str) -> str:
    lines = [header, "", "Median over prompts [quartiles]. Ceiling = N / ESS_p, the most any proposal can gain over "
             "p in effective samples per rollout (capped at the draws per prompt); from half the draws: the same from "
             "the first half of each prompt's draws (close to the full one: not limited by the draws).", "",
             "| λ | prompts | draws | ESS_p / N | ceiling | from half the draws | prompts with ceiling ≥ 10× | "
             "KL(π*‖p) | E_π*[r] − E_p[r] |", "|---|---|---|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['lam']:g} | {s['prompts']} | {s['draws']} | {_cell(s, 'ess_fraction', '.2f')} | "
                     f"{_cell(s, 'ceiling', '.1f')} | {_cell(s, 'ceiling_half_draws', '.1f')} | "
                     f"{s['share_above_claim']:.0%} | {_cell(s, 'kl_target_prior', '.2f')} | "
                     f"{_cell(s, 'reward_gap', '+.3f')} |")
    return "\n".join(lines) + "\n"


def plot(scores: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = [s["lam"] for s in scores]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, label in (("ceiling", "N / ESS_p"), ("ceiling_half_draws", "N / ESS_p, half the draws")):
        ax.plot(lams, [s[m] for s in scores], "-o", label=label)
        ax.fill_between(lams, [s[f"{m}_q1"] for s in scores], [s[f"{m}_q3"] for s in scores], alpha=0.2)
    ax.axhline(CLAIMED_FACTOR, color="k", linestyle="--", linewidth=0.8, label="the claim's 10×")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("most a proposal can gain over p")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT_DIR / "benchmarks/configs/tilt_room.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.config, RoomConfig)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = room_rows(prior_rewards(config.buffers), config.lams)
    write_csv(out / "room.csv", rows)
    scores = summarise(rows)
    header = f"# How much room p leaves a proposal, per λ ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)"
    (out / "room.md").write_text(report(scores, header))
    plot(scores, out / "room.png")
    print((out / "room.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
