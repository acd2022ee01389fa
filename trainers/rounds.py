"""On-policy rounds for P_F, the way GFlowNets are trained (issue 36):

    python -m trainers.rounds --config configs/rounds/soft_ahead.yaml

Round r draws from round r−1's head on the training contexts (`search.harvest` with `sampler: policy`: P_F
explored by tempering and a share of p, each draw's exact log q stored) and fits the head on them and a replay of
earlier rounds (`replay`: all their draws, or each prompt's best few, as Hu et al.), warm-started from round r−1's
head (`trainers.fit` with `--model.init_from`; the balance losses TB / SubTB / VarGrad are minimised at P_F = π*
whatever policy drew the data). After each round, i.i.d. draws of the new P_F on validation contexts that no round
trains on give the two numbers that govern an importance sampler: Var(log w) with w = p e^{λ r} / P_F (issue 36's
Var(log R − log P_F)) and ESS/N. Round 0 is the initial head. Resumable: a round whose head exists is skipped, and
a round cut short resumes its harvest without drawing its finished prompts again. Writes `<output_dir>/rounds.csv`
and `rounds.png`.

`sampler: tree` is the aggregated-search variant (Q♯, Zhou et al. 2025): each round grows MaxEnt-TS trees of the
hybrid that reads round r−1's head (`harvest.search.hybrid`) instead of drawing from P_F, and trains on every
round's trees (`replay: all`), e.g. with SubTB on their paths (`--model.losses.subtb`).

A LoRA head (Hu et al.'s P_F; `--model.lora.*` among `fit`'s options) runs the same rounds: its draws and its
validation draws go through its own backend (frozen prior, adapted states), and `--model.init_from` starts each
round's fit from the last round's adapter as well as its MLP. On this CPU that is slow (two forwards a token, and a
backward through the adapted layers): a GPU's job.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sadt.cli import CommandParser, run_command
from sadt.config import from_dict, load_config, to_dict
from search.config import RECOMMENDED_HEAD
from search.harvest import HarvestConfig

CARD = "head.json"
REPLAYS = ("all", "best", "none")
SAMPLERS = ("policy", "tree")


@dataclass(frozen=True)
class RoundsConfig:
    output_dir: str = "outputs/rounds/run"
    initial_head: str = RECOMMENDED_HEAD  # round 0's head; the fit's head options must match its config
    rounds: int = 3
    harvest: dict = field(default_factory=dict)  # search.harvest settings of each round's draws (sampler: policy
    # and the head are set per round)
    fit: list[str] = field(default_factory=list)  # trainers.fit options of each round, e.g.
    # ["--model.losses.vargrad", "1"]
    validation: str = "generated"  # where P_F is scored after each round: "generated" contexts (`data.generator`,
    # `validation_seed`), or "history" windows of the harvest's series between its training windows
    validation_contexts: int = 8  # "generated": how many; "history": how many per series
    validation_seed: int = 1000
    validation_draws: int = 32  # i.i.d. draws of P_F per validation context
    replay: str = "all"  # what round r trains on besides its own draws: "all" earlier rounds' draws, "best" each
    # prompt's `replay_best` highest-reward distinct draws of earlier rounds (Hu et al.), "none"
    replay_best: int = 8  # "best": draws kept per prompt (a quarter of 24 fresh ones per prompt, as Hu et al.)
    prior_draws: int = 0  # draws from p per training window, harvested once (`prior.h5`) and trained on in every
    # round beside P_F's own, so the fit can keep the forward KL on p's draws (`--model.losses.forward_kl`) that
    # covers π*'s modes: VarGrad on P_F's draws alone turned P_F mode-seeking (BENCHMARKS.md, issue 36)
    sampler: str = "policy"  # each round's data: "policy", draws of the last head's P_F (explored); "tree",
    # MaxEnt-TS trees of the hybrid reading it (the aggregated-search variant; `harvest.search` sets `hybrid`)
    wandb: bool = False  # also log each round's validation scores to Weights & Biases (offline unless WANDB_MODE)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.validation_contexts < 1 or self.validation_draws < 2:
            raise ValueError("rounds need `rounds` >= 1, `validation_contexts` >= 1 and `validation_draws` >= 2")
        if self.validation not in ("generated", "history"):
            raise ValueError(f"rounds `validation` must be 'generated' or 'history', got {self.validation!r}")
        if self.prior_draws < 0:
            raise ValueError(f"rounds `prior_draws` must be >= 0 (0: none), got {self.prior_draws}")
        if self.replay not in REPLAYS or self.replay_best < 1:
            raise ValueError(f"rounds `replay` must be one of {REPLAYS} and `replay_best` >= 1, got "
                             f"{self.replay!r} and {self.replay_best}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"rounds `sampler` must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "tree" and self.replay == "best":
            raise ValueError("rounds `sampler: tree` train on whole trees: `replay` must be 'all' or 'none' "
                             "('best' keeps single draws, not the tree paths SubTB reads)")
        for key in ("sampler", "head", "output"):
            if key in self.harvest:
                raise ValueError(f"rounds set `harvest.{key}` themselves; remove it from the config")
        harvest = self.harvest_config(self.initial_head, "unused.h5")  # a bad harvest setting fails here, named
        if self.validation == "history" and (not harvest.series or harvest.windows_per_series < 2):
            raise ValueError("rounds `validation: history` takes windows between the harvest's: it needs "
                             "`harvest.series` and `harvest.windows_per_series` >= 2")
        if harvest.generator_seed == self.validation_seed and harvest.generated:
            raise ValueError("`validation_seed` must differ from `harvest.generator_seed`: validation contexts "
                             "would be training contexts")

    def harvest_config(self, head: str, output: str) -> HarvestConfig:
        return from_dict({**self.harvest, "sampler": self.sampler, "head": head, "output": output}, HarvestConfig,
                         source="", prefix="harvest.")

    def prior_harvest_config(self, output: str) -> HarvestConfig:
        """`prior_draws` draws from p on the same training windows (the same prompts: the forward KL's weights
        normalise over each prompt's draws)."""
        search = {**self.harvest.get("search", {}), "n_samples": self.prior_draws, "batch_size": self.prior_draws}
        return from_dict({**self.harvest, "sampler": "prior", "output": output, "search": search}, HarvestConfig,
                         source="", prefix="harvest.")


@dataclass(frozen=True)
class Round:
    """One round's files: its draws, the head fitted after them, the fit's logs."""

    directory: Path

    @property
    def draws(self) -> Path:
        return self.directory / "draws.h5"

    @property
    def head(self) -> Path:
        return self.directory / "head"

    @property
    def replay(self) -> Path:
        return self.directory / "replay.h5"

    @property
    def done(self) -> bool:
        return (self.head / CARD).is_file()


def validation_log_weights(lm, codec, head_dir: str | None, config: RoundsConfig) -> list[np.ndarray]:
    """Per validation context, the log-weights log p − log q + λ r of `validation_draws` i.i.d. draws of the
    head's P_F (of p itself when `head_dir` is None)."""
    from sadt.head_io import load_search_head
    from sadt.lm.base_model import lm_fingerprint
    from search.forecast_task import ForecastTask

    harvest = config.harvest_config(config.initial_head, "unused.h5")
    head = None if head_dir is None else load_search_head(head_dir, lm_fingerprint(), to_dict(codec.config))
    return [policy_log_weights(lm, ForecastTask.build(codec, values, harvest.horizon, harvest.reward), head,
                               harvest.search.lam, config.validation_draws, seed=i)
            for i, values in enumerate(validation_contexts(config))]


def policy_log_weights(lm, task, head, lam: float, n: int, seed: int, batch_size: int | None = None) -> np.ndarray:
    """log p − log q + λ r of `n` i.i.d. draws of the head's P_F on one forecast task (of p when `head` is None),
    `batch_size` at a time (all at once when None)."""
    from search.ancestral import sample_policy

    drawing_lm = lm if head is None or head.lm is None else head.lm  # a LoRA head's P_F reads its adapted states
    draws = sample_policy(drawing_lm, task, n_samples=n, batch_size=batch_size or n, value_head=task.value(head, lam),
                          guide_lam=lam if head is not None else 0.0, seed=seed, progress=False)
    return draws.log_prior - draws.log_proposal + lam * task.reward_fn(draws.actions)


def training_data(config: RoundsConfig, rounds: list[Round]) -> list[Path]:
    """The buffers the last of `rounds` trains on: its own draws, the replay of the earlier ones (`config.replay`;
    "best" writes `replay.h5` in the round's folder, `data.buffer_select.best_draws`) and p's draws (`prior_draws`)."""
    this, earlier = rounds[-1], rounds[:-1]
    prior = [prior_buffer(config)] if config.prior_draws else []
    if config.replay == "none" or not earlier:
        return [this.draws, *prior]
    if config.replay == "all":
        return [r.draws for r in rounds] + prior
    from data.buffer_select import best_draws

    return [this.draws, best_draws([r.draws for r in earlier], this.replay, config.replay_best), *prior]


def prior_buffer(config: RoundsConfig) -> Path:
    """Where the rounds keep p's draws of their training windows (`prior_draws`), shared by every round."""
    return Path(config.output_dir) / "prior.h5"


def validation_contexts(config: RoundsConfig) -> list[np.ndarray]:
    """The contexts P_F is scored on after each round (`config.validation`); no round trains on them."""
    harvest = config.harvest_config(config.initial_head, "unused.h5")
    if config.validation == "generated":
        from data.generator import generate_one

        return [generate_one(config.validation_seed, i, harvest.context_length).values
                for i in range(config.validation_contexts)]
    from search.harvest import between_windows

    return [context for name in harvest.series for _, context in
            between_windows(name, harvest.context_length, harvest.horizon, harvest.windows_per_series,
                            config.validation_contexts)]


def validation_scores(log_w: list[np.ndarray], prior_log_w: list[np.ndarray]) -> dict[str, float]:
    """Means over the validation contexts of Var(log w), ESS/N and PSIS k̂ of P_F's draws, and of ESS_q/ESS_p
    against as many i.i.d. draws of p (P_F adds no LM forwards: equal draws are equal LM tokens)."""
    from sadt.importance import effective_sample_size, psis_khat

    ess = [effective_sample_size(w) / len(w) for w in log_w]
    ess_p = [effective_sample_size(w) / len(w) for w in prior_log_w]
    return {"var_log_w": float(np.mean([np.var(w) for w in log_w])), "ess_per_draw": float(np.mean(ess)),
            "khat": float(np.mean([psis_khat(w) for w in log_w])),
            "ess_vs_p": float(np.mean(np.asarray(ess) / np.asarray(ess_p)))}


def run_rounds(config: RoundsConfig) -> list[dict]:
    """Every round not yet done, then the curve of every round (module docstring)."""
    from sadt.codec import Codec
    from sadt.head_io import load_search_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.harvest import harvest
    from trainers import fit

    out = Path(config.output_dir)
    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer, config.harvest_config(config.initial_head, "unused.h5").codec)
    rounds = [Round(out / f"round_{r}") for r in range(1, config.rounds + 1)]
    heads = [config.initial_head] + [str(r.head) for r in rounds]
    if config.prior_draws and not all(r.done for r in rounds):  # resumable: finished prompts are not drawn again
        harvest(lm, codec, config.prior_harvest_config(str(prior_buffer(config))), lm_fingerprint())
    for r, this in enumerate(rounds, start=1):
        if this.done:
            continue
        harvest_config = config.harvest_config(heads[r - 1], str(this.draws))
        previous = load_search_head(heads[r - 1], lm_fingerprint(), to_dict(codec.config))
        harvest(previous.lm or lm, codec, harvest_config, lm_fingerprint(), head=previous)  # a LoRA head: its own LM
        data = ",".join(str(p) for p in training_data(config, rounds[:r]))
        fit.main([*config.fit, "--data.buffers", f"[{data}]", "--model.lam", str(harvest_config.search.lam),
                  "--model.init_from", heads[r - 1], "--model.save_to", str(this.head), "--model.overwrite", "true",
                  "--trainer.default_root_dir", str(this.directory / "fit")])
    prior = validation_log_weights(lm, codec, None, config)
    rows = [{"round": r, "head": head, **validation_scores(validation_log_weights(lm, codec, head, config), prior)}
            for r, head in enumerate(heads)]
    write_curve(rows, out)
    if config.wandb:
        log_to_wandb(rows, config)
    return rows


def log_to_wandb(rows: list[dict], config: RoundsConfig) -> None:
    """One W&B run (project `sadt-rounds`, under `<output_dir>/wandb`) with each round's scores at step = round."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project="sadt-rounds", dir=config.output_dir, config=to_dict(config), reinit="create_new")
    for row in rows:
        run.log({k: v for k, v in row.items() if k not in ("round", "head")}, step=row["round"])
    run.finish()


def write_curve(rows: list[dict], out: Path) -> None:
    """`rounds.csv` and `rounds.png`: Var(log w) and ESS/N of the validation draws by round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with (out / "rounds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    rounds = [row["round"] for row in rows]
    left.plot(rounds, [row["var_log_w"] for row in rows], marker="o")
    left.set(xlabel="round", ylabel="Var(log w) on validation contexts", yscale="log")
    right.plot(rounds, [row["ess_per_draw"] for row in rows], marker="o")
    right.set(xlabel="round", ylabel="ESS / N of i.i.d. P_F draws", ylim=(0, 1))
    for axis in (left, right):
        axis.set_xticks(rounds)
    fig.tight_layout()
    fig.savefig(out / "rounds.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = load_config(args.config, RoundsConfig)
    rows = run_rounds(config)
    for row in rows:
        print(f"round {row['round']}: Var(log w) {row['var_log_w']:.3f}, ESS/N {row['ess_per_draw']:.3f} "
              f"(k̂ {row['khat']:.2f}; {row['ess_vs_p']:.2f}× i.i.d. p's)")
    print(f"curve: {Path(config.output_dir) / 'rounds.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
