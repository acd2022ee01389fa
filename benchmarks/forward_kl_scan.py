"""Does a head's P_F cover π* better than p on the fit's own prompts? The forward KL from stored draws, no sampling.

    python benchmarks/forward_kl_scan.py --config benchmarks/configs/forward_kl_scan_soft_lam15.yaml

For each prompt of the buffers with draws from p (source `prior_sample`, `search.harvest` with
`sampler: prior`), the self-normalised estimate of

    KL(π*‖P_F^s) − KL(π*‖p) = −E_π*[log P_F^s(x)/p(x)],   P_F^s(a|s) ∝ p(a|s) exp(s·λ·Q_φ(s, a)),

(`sadt.losses.weighted_cross_entropy` with weights ∝ exp(λ r)), for every head and guide scale s.
Below 0: P_F^s is closer to π* than p in the divergence importance weights pay for. Prompts are
split as the fit split them (`val_fraction`, `trainers.data`), so the training prompts show what
the head learned and the validation prompts what generalises; a guide scale may be chosen on the
latter, never on the amortisation benchmark's held-out windows. It reads only the buffers and one
teacher-forced forward per draw, so it runs in minutes where `proposal_quality.py` samples.

Heads fitted on other buffers than the scan's (`trained_on`) get their own split: a prompt is "train"
for a head when its fit trained on it, "val" otherwise. "common_val" repeats the rows of the prompts
that are "val" for every head, so heads fitted on different data are compared on the same prompts.

Writes `<output_dir>/scan.csv` (one row per head, split, prompt and s), `scan.md` (means over
prompts with bootstrap 95% intervals, and the s that minimises each head's validation mean) and
`scan.png` (the mean against s, one panel per split).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.evaluation.kl_scan_stats import (
    best_scales,
    paired_differences,
    summarise,
    with_common_validation,
)
from benchmarks.evaluation.tables import earlier_rows, write_csv
from sadt.cli import CommandParser, run_command
from sadt.config import load_config

ROOT_DIR = Path(__file__).resolve().parents[1]

SPLITS = ("train", "val", "common_val")


@dataclass(frozen=True)
class ScanConfig:
    output_dir: str = "benchmarks/results/forward_kl_scan"
    buffers: list[str] = field(default_factory=lambda: ["data/buffers/recipe.h5", "data/buffers/recipe_prior.h5"])
    val_fraction: float = 0.2  # the fits' split (configs/fit/*.yaml), so "val" prompts are ones no head trained on
    # name -> a head's folder, or a parameter-free value (search.forecast_task.PARAMETER_FREE_VALUES)
    heads: dict[str, str] = field(default_factory=lambda: {"soft_ahead": "checkpoints/heads/soft_ahead_lam15"})
    # head -> the buffers its fit read (split there by `val_fraction`); a head not named here trained on `buffers`
    trained_on: dict[str, list[str]] = field(default_factory=dict)
    prompts: str = "all"  # "val": score only the buffers' validation prompts (skips the LM passes over training ones)
    lam: float = 5.0
    guide_scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    bootstrap: int = 2000

    def __post_init__(self) -> None:
        if not self.heads or not self.buffers:
            raise ValueError("forward_kl_scan needs at least one head and one buffer")
        if not all(s > 0 for s in self.guide_scales):
            raise ValueError(f"`guide_scales` must be > 0 (s = 0 is p itself), got {self.guide_scales}")
        if self.prompts not in ("all", "val"):
            raise ValueError(f"scan `prompts` must be 'all' or 'val', got {self.prompts!r}")
        unknown = sorted(set(self.trained_on) - set(self.heads))
        if unknown:
            raise ValueError(f"`trained_on` names heads that `heads` lacks: {unknown}")


def load_module(head_dir: str, datamodule, lam: float):
    """A FlowHeadModule built from the head's sidecar (its training settings), holding the head's weights;
    for a parameter-free value's name (`forecast_task.PARAMETER_FREE_VALUES`), an untrained module
    whose Q is that value exactly (β = 1, no residual, zero bias)."""
    from sadt.flow_head import FlowHeadConfig
    from sadt.head_io import load_head
    from sadt.lm.base_model import lm_fingerprint
    from search.forecast_task import PARAMETER_FREE_VALUES
    from trainers.module import FlowHeadModule, module_options

    if head_dir in PARAMETER_FREE_VALUES:  # R⁺ᵈ or V⁺ᵈ: FlowHeadConfig refuses the dropped R and R⁺ by name
        config = FlowHeadConfig(value_form=PARAMETER_FREE_VALUES[head_dir], residual=False)
        module = FlowHeadModule(lam=lam, head=config)
        module.attach(datamodule)
        return module.eval()
    head, card = load_head(head_dir, lm_fingerprint())
    if card.adapter:  # its adapter's weights live beside the head; this rebuild would leave them random
        raise ValueError(f"{head_dir}: forward_kl_scan reads MLP heads on the frozen LM, not LoRA heads")
    module = FlowHeadModule(**module_options(card.training))  # flat options of older cards: grouped on reading
    module.head.load_state_dict(head.state_dict())
    module.attach(datamodule)
    return module.eval()


def scan_head(name: str, module, datamodule, config: ScanConfig, train_keys: set[str] | None = None) -> list[dict]:
    """Per prompt and s: the SNIS estimate of KL(π*‖P_F^s) − KL(π*‖p) over the prompt's draws from p.

    Every prompt of `datamodule` with draws from p is scored (its validation prompts only, with
    `prompts: val`); its split is "train" when its key is in `train_keys` (default: the datamodule's
    own training prompts), else "val"."""
    import torch

    from data.buffer import SOURCES
    from sadt.losses import weighted_cross_entropy
    from trainers.data import collate

    if module.hparams.lam != config.lam:
        raise ValueError(f"head {name!r} was trained at λ = {module.hparams.lam}, the scan's `lam` is {config.lam}")
    if train_keys is None:
        train_keys = {x["key"] for x in datamodule.train_set.items}
    by_prompt: dict[str, list[dict]] = {}
    scored = datamodule.val_set.items + ([] if config.prompts == "val" else datamodule.train_set.items)
    for x in scored:
        if x["source"] == SOURCES["prior_sample"]:
            by_prompt.setdefault(x["key"], []).append(x)
    rows = []
    for key, items in tqdm(by_prompt.items(), desc=name, unit="prompt"):
        batch = collate(items)
        with torch.no_grad():
            q, log_prior, _, actions = module.q_values(batch)
            weights = module.draw_weights(batch).to(q)
            for s in config.guide_scales:
                args = (q, log_prior, actions, batch["mask"], weights, s * config.lam)
                rows.append({"head": name, "split": "train" if key in train_keys else "val", "prompt": key,
                             "guide_scale": s, "draws": len(items),
                             "forward_kl": float(weighted_cross_entropy(*args).mean())})
    return rows


def training_keys(buffers: list[str], val_fraction: float) -> set[str]:
    """The prompt keys a fit on `buffers` trains on (trainers.data's split by key hash)."""
    from sadt.lm.base_model import lm_fingerprint
    from trainers.data import BufferDataModule

    datamodule = BufferDataModule(buffers, val_fraction=val_fraction, lm_fingerprint=lm_fingerprint())
    datamodule.setup()
    return {x["key"] for x in datamodule.train_set.items}


def run(config: ScanConfig, keep: list[dict]) -> list[dict]:
    """Scan every head of the config that `keep` (an earlier run's rows) has no rows for."""
    from sadt.lm.base_model import lm_fingerprint
    from trainers.data import BufferDataModule

    datamodule = BufferDataModule(config.buffers, val_fraction=config.val_fraction, lm_fingerprint=lm_fingerprint())
    datamodule.setup()
    done = {r["head"] for r in keep}
    rows = [r for r in keep if r["head"] in config.heads]  # with_common_validation re-derives "common_val"
    previous = None  # the frozen LM's states of each draw are the same for every head: computed once, then handed on
    for name, path in config.heads.items():
        if name not in done:
            keys = training_keys(config.trained_on[name], config.val_fraction) if name in config.trained_on else None
            module = load_module(path, datamodule, config.lam)
            if previous is not None:  # the cache and its size together, so the memory budget stays one budget
                features, kept = module.features, previous.features
                features.memory, features.memory_bytes = kept.memory, kept.memory_bytes
            rows += scan_head(name, module, datamodule, config, keys)
            previous = module
    return with_common_validation(rows)










def report(scores: list[dict], header: str, paired: list[dict] | None = None) -> str:
    lines = [header, "", "KL(π*‖P_F^s) − KL(π*‖p), mean over the split's prompts (bootstrap 95% interval); "
             "below 0, P_F^s covers π* better than p.", "", "| head | split | prompts | s | mean | 95% CI |",
             "|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['head']} | {s['split']} | {s['prompts']} | {s['guide_scale']:g} | {s['mean']:+.3f} | "
                     f"[{s['low']:+.3f}, {s['high']:+.3f}] |")
    if paired:
        lines += ["", f"Paired on the common validation prompts: each head minus {paired[0]['reference']} at the "
                  "same s (below 0: closer to π*).", "", "| head | s | prompts | difference | 95% CI |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d['head']} | {d['guide_scale']:g} | {d['prompts']} | {d['mean']:+.3f} | "
                  f"[{d['low']:+.3f}, {d['high']:+.3f}] |" for d in paired]
    chosen = best_scales(scores)
    if chosen:
        lines += ["", "Lowest validation mean: " + ", ".join(f"{h} s = {s:g}" for h, s in chosen.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(scores: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [split for split in SPLITS if any(s["split"] == split for s in scores)]  # `prompts: val` has no train
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, split in zip(axes, splits, strict=True):
        for head in dict.fromkeys(s["head"] for s in scores):
            pts = [s for s in scores if s["head"] == head and s["split"] == split]
            pts.sort(key=lambda s: s["guide_scale"])
            if not pts:
                continue
            x = [0.0] + [p["guide_scale"] for p in pts]  # s = 0 is p: exactly 0
            ax.plot(x, [0.0] + [p["mean"] for p in pts], "-o", label=head)
            ax.fill_between(x, [0.0] + [p["low"] for p in pts], [0.0] + [p["high"] for p in pts], alpha=0.2)
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_title(f"{split.replace('_', ' ')} prompts", fontsize=10)
        ax.set_xlabel("guide scale s")
    axes[0].set_ylabel("KL(π*‖P_F^s) − KL(π*‖p)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT_DIR / "benchmarks/configs/forward_kl_scan_soft_lam15.yaml")
    parser.add_argument("--resume", action="store_true", help="keep scan.csv's rows; scan only the heads it lacks")
    parser.add_argument("--summarise", action="store_true", help="rebuild scan.md and the plot from scan.csv")
    args = parser.parse_args(argv)
    config = load_config(args.config, ScanConfig)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "scan.csv"
    keep = earlier_rows(parser, args, csv_path, text_columns=("head", "split", "prompt"))
    if args.summarise:
        rows = with_common_validation(keep)
    else:
        rows = run(config, keep)
        write_csv(csv_path, rows)
    scores = summarise(rows, config.bootstrap, np.random.default_rng(0))
    header = f"# Forward KL of each head's P_F against p ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)"
    paired = paired_differences(rows, config.bootstrap, np.random.default_rng(0))
    (out / "scan.md").write_text(report(scores, header, paired))
    plot(scores, out / "scan.png")
    print((out / "scan.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
