"""The LightningModule that trains F_φ (an MLP head on the frozen LM, or on a LoRA-adapted one) with balance losses.

It is the loop around three parts: the LM's features along each trajectory (`trainers.features.LMFeatures`,
which owns the caches), the task's grammar, value terms and the draws' weights, rebuilt from the buffers' metadata
(`trainers.task_values`; a text buffer, `task: text`, brings its grammar and no value terms), and the losses of
`sadt.losses` weighed by `trainers.options.LossWeights` at the λ chosen here: buffers store raw rewards, so one
buffer trains heads for any λ. Dropout is off (the LM is in eval mode and frozen; the head has none; LoRA
dropout is 0).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict

from data.buffer import SOURCES
from sadt import losses
from sadt.codec import Codec, CodecConfig
from sadt.config import from_dict
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.grammar import DigitGrammar, TextGrammar
from sadt.head_card import HeadCard
from sadt.head_io import load_head, save_head
from sadt.lm.base_model import lm_fingerprint, load_base_lm
from sadt.lora_head import ADAPTER_DIR, LoRAHeadConfig, add_lora, lora_parameters, save_adapter
from sadt.rewards import ForecastReward
from trainers.features import LMFeatures, support_positions
from trainers.options import FeatureConfig, LossWeights, OptimiserConfig, grouped_options
from trainers.task_values import DrawWeights, ForecastShaping

TASKS = ("forecast", "text")  # what a buffer's actions are (`FlowHeadModule.task`)


class StepValues(NamedTuple):
    """What the losses read along a batch's trajectories (`FlowHeadModule.q_values`)."""

    q: torch.Tensor  # (B, T, A) Q_φ(s_t, ·)
    log_prior: torch.Tensor  # (B, T, A) log p(·|s_t)
    log_z: torch.Tensor  # (B,) log Z_φ(c)
    actions: torch.Tensor  # (B, T) the action taken at each step, a column of q and log_prior (-1 padded)


def prior_top_k(harvest_config: dict) -> int | None:
    """The top-k truncation of the prior the buffer's draws were made under (the target's p)."""
    search = harvest_config.get("search", {})
    return 1 if search.get("method") == "greedy" else search.get("top_k")


def training_settings(options: dict) -> dict:
    """A fit's options as plain data (groups as nested dicts): its hparams and the head card's `training`."""
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in options.items()}


OPTION_GROUPS = {"head": FlowHeadConfig, "losses": LossWeights, "optimiser": OptimiserConfig,
                 "features": FeatureConfig, "lora": LoRAHeadConfig}


def module_options(training: dict) -> dict:
    """`FlowHeadModule`'s arguments from a head card's `training` (`training_settings`, or the flat options of
    cards written before the groups); options the module no longer has are dropped."""
    grouped, accepted = grouped_options(training), inspect.signature(FlowHeadModule).parameters
    out = {}
    for key, value in grouped.items():
        if key in OPTION_GROUPS and value is not None:
            cls = OPTION_GROUPS[key]
            value = cls(**{f.name: value[f.name] for f in dataclasses.fields(cls) if f.name in value})
        if key in accepted:
            out[key] = value
    return out


class FlowHeadModule(pl.LightningModule):
    """F_φ training.

    Args:
        lam: inverse temperature λ of the target p(x) exp(λ r(x)).
        base_model: folder of the converted base model (default: checkpoints/base).
        head: the head's widths and task value (`FlowHeadConfig`): with a `value_form`, Q_φ adds the task
            value rebuilt per prompt from the buffer's reward config ("digit_ahead" R⁺ᵈ, "soft_ahead" V⁺ᵈ at the
            fit's λ, recommended), weighed by β per 1/n of the horizon completed (`reward_weight_bins`);
            `residual: false` drops the MLP on h(s).
        losses: the weights of the losses (`LossWeights`).
        optimiser: AdamW's learning rates and weight decay (`OptimiserConfig`).
        features: the LM features' caches and on-disk store (`FeatureConfig`).
        lora: a LoRA adapter on the LM's top layers (`LoRAHeadConfig`; None: the MLP head on frozen states).
        keep_best: write the head (and adapter) of the validation epoch with the lowest `val/loss` rather than
            the last one; the card's `best` names that epoch. Validation prompts are never trained on, so this is
            early stopping against over-fitting the training prompts.
        save_to: where the final head (safetensors + card) is written; `trainers.fit` refuses a folder that
            already holds a head before training, unless `overwrite` is set or it resumes a run.
        overwrite: let `trainers.fit` replace a head already in `save_to`.
        init_from: a head directory whose weights start the fit (its `head_config` must be this fit's): an
            on-policy round (`trainers.rounds`) goes on from the last round's head.
        task: what the buffers' actions are: "forecast" (the codec's digits, buffers from `search.harvest`) or
            "text" (the LM's whole vocabulary, buffers from `search.text_task.harvest_text`; a plain head, no
            `value_form`: a text task has no partial reward).
    """

    def __init__(
        self, lam: float = 5.0, base_model: str | None = None, head: FlowHeadConfig = FlowHeadConfig(),
        losses: LossWeights = LossWeights(), optimiser: OptimiserConfig = OptimiserConfig(),
        features: FeatureConfig = FeatureConfig(), lora: LoRAHeadConfig | None = None, keep_best: bool = True,
        save_to: str = "outputs/heads/head", overwrite: bool = False, init_from: str | None = None,
        task: str = "forecast",
    ) -> None:
        super().__init__()
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"model `lam` must be a finite number > 0, got {lam}")
        if lora is not None and not (head.residual and head.residual_inputs == "lm_states"):
            raise ValueError("a `lora` adapter changes the LM states that the head's residual MLP reads: it needs "
                             "`head.residual: true` and `head.residual_inputs: lm_states`")
        if task not in TASKS:
            raise ValueError(f"model `task` must be one of {TASKS}, got {task!r}")
        if task == "text" and (head.shaped or head.residual_inputs == "numbers"):
            raise ValueError("a text head reads the LM's states alone: `head.value_form` and numbers inputs are "
                             "forecast terms")
        # hparams hold plain data (checkpoints load it weights-only); the typed groups are attributes
        self.save_hyperparameters(training_settings({
            "lam": lam, "base_model": base_model, "head": head, "losses": losses, "optimiser": optimiser,
            "features": features, "lora": lora, "keep_best": keep_best, "save_to": save_to, "overwrite": overwrite,
            "init_from": init_from, "task": task}))
        self.loss_weights, self.optimiser_config, self.lora_config = losses, optimiser, lora
        self.lm, self.tokenizer = load_base_lm(base_model)  # frozen, and not a submodule: never checkpointed
        self.fingerprint = lm_fingerprint(base_model)
        self.action_token_ids = (Codec(self.tokenizer).action_token_ids if task == "forecast"
                                 else list(range(len(self.tokenizer))))  # a text action is its token id
        self.head = MLPFlowHead(self.lm.head.weight[self.action_token_ids], head)
        self.peft = None
        if lora is not None:
            self.peft = add_lora(self.lm.model, lora)  # injected in place: `frozen()` gives the prior
            self.lora_params = torch.nn.ParameterList(lora_parameters(self.peft))  # trained and checkpointed
        if init_from is not None:
            self._start_from(init_from, head, lora)
        self.features = LMFeatures(self.lm, self.action_token_ids, features, self.fingerprint, self.peft)
        self.codec: Codec | None = None
        self.grammar: DigitGrammar | TextGrammar | None = None
        self.shaping: ForecastShaping | None = None
        self.draw_weights: DrawWeights | None = None
        self.buffer_meta: dict = {}
        self.best: dict | None = None  # {"epoch", "val_loss", "state"}: the kept head (keep_best)
        self.val_sums = torch.zeros(2, dtype=torch.float64)  # Σ batch loss · B, Σ B over this validation epoch

    def _start_from(self, directory: str, config: FlowHeadConfig, lora: LoRAHeadConfig | None) -> None:
        """Load the head in `directory` (and its LoRA adapter, for a LoRA fit), refused unless its LM, head config
        and adapter are this fit's."""
        head, card = load_head(directory, self.fingerprint)
        if head.config != config:
            raise ValueError(f"model.init_from {directory}: its head_config {card.head_config} is not this fit's "
                             f"{vars(config)}; set the fit's head options to match")
        adapter = {k: v for k, v in (card.adapter or {}).items() if k != "kind"} or None
        wanted = None if lora is None else {k: list(v) if isinstance(v, tuple) else v for k, v in vars(lora).items()}
        if adapter != wanted:
            raise ValueError(f"model.init_from {directory}: its adapter {adapter} is not this fit's `lora` {wanted}")
        self.head.load_state_dict(head.state_dict())
        if lora is not None:
            set_peft_model_state_dict(self.peft, load_peft_weights(str(Path(directory) / ADAPTER_DIR)))

    def setup(self, stage: str) -> None:
        self.attach(self.trainer.datamodule)

    def on_fit_start(self) -> None:
        """The frozen LM joins the head on the trainer's device (a GPU fit runs its forwards there)."""
        if self.lm.device != self.device:
            self.lm.to(self.device)
            self.features.prompt_cache.clear()

    def attach(self, datamodule) -> None:
        """Read the buffers' grammar, codec and reward config, and the normalisers of their draws from p
        (`setup` calls this; outside a Trainer, call it with a set-up `BufferDataModule`)."""
        meta, where = datamodule.meta, ", ".join(map(str, datamodule.paths))
        task = "text" if meta.get("task") == "text" else "forecast"
        if task != self.hparams.task:
            raise ValueError(f"{where}: a {task}-task buffer; fit it with `--model.task {task}`")
        if task == "forecast" and meta.get("action_token_ids") != self.action_token_ids:
            raise ValueError(f"{where}: the buffer's action tokens differ from this LM's codec; harvest with this LM")
        config, hp = meta["config"], self.hparams
        if task == "text":
            if meta.get("n_actions") != len(self.action_token_ids) or "max_tokens" not in meta.get("grammar", {}):
                raise ValueError(f"{where}: a text buffer of {meta.get('n_actions')} tokens (this LM has "
                                 f"{len(self.action_token_ids)}) or without its grammar; harvest it with this LM "
                                 f"and search.text_task.harvest_text")
            self.grammar = TextGrammar(n_actions=meta["n_actions"], max_tokens=meta["grammar"]["max_tokens"],
                                       stop_actions=tuple(meta["grammar"]["stop_actions"]))
        else:
            self.grammar = DigitGrammar(horizon=config["horizon"], max_digits=config["codec"]["max_digits"])
            self.codec = Codec(self.tokenizer, from_dict(config["codec"], CodecConfig))
            head = self.head.config
            self.shaping = ForecastShaping(self.codec, config, head.value_form, hp.lam,
                                           positions=bool(head.reward_weight_positions))
        self.features.attach(self.grammar, prior_top_k(config))
        self.buffer_meta = meta
        with_policy = self.loss_weights.forward_kl_on == "prior_and_policy"
        try:
            self.draw_weights = DrawWeights((datamodule.train_set, datamodule.val_set), hp.lam, with_policy)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if self.loss_weights.forward_kl and not self.draw_weights:
            raise ValueError(f"`losses.forward_kl` needs draws from p (source 'prior_sample'"
                             f"{' or policy_sample' if with_policy else ''}) in the buffers {datamodule.paths}: "
                             f"harvest them with `sampler: prior`")
        policy = SOURCES["policy_sample"]
        if self.loss_weights.vargrad and self.loss_weights.vargrad_on == "policy" and not any(
                x["source"] == policy for split in (datamodule.train_set, datamodule.val_set) for x in split.items):
            raise ValueError(f"`losses.vargrad_on: policy` needs P_F's own draws (source 'policy_sample') in the "
                             f"buffers {datamodule.paths}: harvest them with `sampler: policy` (trainers.rounds)")

    def reward_of(self, prompt: tuple) -> ForecastReward:
        """The buffer's reward for one prompt, rebuilt from its own values."""
        return self.shaping.reward_of(prompt)

    # -- losses ------------------------------------------------------------------------------

    def q_values(self, batch: dict) -> StepValues:
        """Q_φ(s_t, ·) (B, T, A) along the batch's trajectories, log p(·|s_t) (B, T, A), log Z_φ(c) (B,) and the
        actions (B, T) as columns of those; a text task under top_k scores each step's top k tokens only (A = k,
        `trainers.features.Features.support`), where P_F ∝ p_k exp(λ Q_φ) has all its mass."""
        features = self.features(batch)
        if features.support is not None:
            q = self.head.q_at(features.hidden, features.support)
            actions = support_positions(features.support, batch["actions"], batch["mask"])
            return StepValues(q, features.log_prior, self.head.log_z(features.prompt_hidden), actions)
        numbers = self.head.config.residual_inputs == "numbers"
        q = self.head.number_q(self.shaping.numbers(batch)) if numbers else self.head.q(features.hidden)
        if self.head.config.shaped:
            r, share, position = self.shaping(batch).to(q)
            q = q + self.head.weigh_reward(r, share, position)
        return StepValues(q, features.log_prior, self.head.log_z(features.prompt_hidden), batch["actions"])

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        q, log_prior, log_z, actions = self.q_values(batch)
        lam, weights = self.hparams.lam, self.loss_weights
        args = (q, log_prior, actions, batch["mask"])
        out = {"tb": losses.trajectory_balance(*args, log_z, batch["reward"], lam).mean(), "log_z": log_z.mean()}
        total = weights.tb * out["tb"]
        if weights.subtb:
            out["subtb"] = losses.subtrajectory_balance(*args, log_z, batch["reward"], lam, weights.subtb_weight).mean()
            total = total + weights.subtb * out["subtb"]
        if weights.db:
            out["db"] = losses.detailed_balance(*args, log_z, batch["reward"], lam).mean()
            total = total + weights.db * out["db"]
        rows = self.vargrad_rows(batch)
        if rows.any():
            out["var_log_ratio"] = losses.vargrad(*(x[rows] for x in (*args, batch["reward"], batch["prompt_index"])),
                                                  lam)
        if weights.vargrad and "var_log_ratio" in out:
            total = total + weights.vargrad * out["var_log_ratio"]
        if weights.value:
            out["value"] = losses.value_regression(q, actions, batch["mask"], batch["tree_values"])
            total = total + weights.value * out["value"]
        n_weighed = int(self.draw_weights.rows(batch).sum())
        if n_weighed:  # mean over the batch's weighed draws: each prompt's draws average its SNIS estimate
            omega = self.draw_weights(batch).to(q)
            out["forward_kl"] = losses.weighted_cross_entropy(*args, omega, lam).sum() / n_weighed
            total = total + weights.forward_kl * out["forward_kl"]
        out["loss"] = total
        return out

    def vargrad_rows(self, batch: dict) -> torch.Tensor:
        """The batch's draws VarGrad is taken over (`losses.vargrad_on`): all, or P_F's own."""
        if self.loss_weights.vargrad_on == "policy":
            return batch["source"] == SOURCES["policy_sample"]
        return torch.ones_like(batch["reward"], dtype=torch.bool)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        B = len(batch["prompts"])
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=B)
        self.log_dict({"train/reward_mean": batch["reward"].mean(), "train/reward_max": batch["reward"].max()},
                      batch_size=B)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch)
        B = len(batch["prompts"])
        self.log_dict({f"val/{k}": v for k, v in out.items()}, prog_bar=False, batch_size=B)
        self.val_sums += torch.tensor([float(out["loss"]) * B, B], dtype=torch.float64)

    # -- the kept epoch, the optimiser, the written head ---------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.val_sums.zero_()

    def on_validation_epoch_end(self) -> None:
        """Keep a copy of the trainable state when this epoch's mean val/loss is the lowest so far."""
        sums = self.val_sums.to(self.device, torch.float32)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # every rank's validation prompts
        if self.trainer.sanity_checking or not self.hparams.keep_best or sums[1] == 0:
            return
        val_loss = float(sums[0] / sums[1])
        if self.best is None or val_loss < self.best["val_loss"]:
            state = {k: v.detach().clone() for k, v in self.state_dict().items()}  # head (+ adapter), never the LM
            self.best = {"epoch": self.current_epoch, "val_loss": val_loss, "state": state}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sadt_best"] = self.best  # a resumed run keeps comparing against the best so far

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best = checkpoint.get("sadt_best")

    def configure_optimizers(self):
        opt = self.optimiser_config
        q_params = [p for n, p in self.head.named_parameters() if not n.startswith(("log_z", "reward_weight"))]
        groups = [  # log Z_φ(c) is a level, not a feature map: no shrinkage towards 0
            {"params": q_params, "lr": opt.lr},
            {"params": self.head.log_z_mlp.parameters(), "lr": opt.log_z_lr, "weight_decay": 0.0},
        ]
        if self.head.config.reward_weight_bins:  # β is R's scale, not a feature map: no shrinkage towards 0
            groups.append({"params": [self.head.reward_weight], "lr": opt.reward_weight_lr, "weight_decay": 0.0})
        if self.peft is not None:
            groups.append({"params": list(self.lora_params), "lr": opt.lora_lr})
        return torch.optim.AdamW(groups, weight_decay=opt.weight_decay)

    def _training_data(self) -> dict:
        """What the head learned from, so one command per buffer can rebuild it: buffers, prompt counts and
        the split (`--data.train_prompts N --data.val_fraction f`), and each buffer's harvest settings
        (series windows, generator seed and count, sampler), in `buffers` order."""
        dm = self.trainer.datamodule
        names = ("series", "windows_per_series", "generated", "generator_seed", "seeds", "context_length",
                 "horizon", "sampler")
        return {"buffers": [str(p) for p in dm.paths], "train_prompts": len({x["key"] for x in dm.train_set.items}),
                "val_prompts": len({x["key"] for x in dm.val_set.items}), "val_fraction": dm.val_fraction,
                "harvests": [{k: config.get(k) for k in names} for config in dm.harvest_configs]}

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:  # DDP ranks hold the same synced head; one writes it
            return
        if self.best is not None:
            self.load_state_dict(self.best["state"])
        config, lora = self.buffer_meta.get("config", {}), self.lora_config
        card = HeadCard.for_head(
            self.head, lm_fingerprint=self.fingerprint, lam=self.hparams.lam, gamma=self.buffer_meta.get("gamma"),
            codec=config.get("codec"),
            action_token_ids=self.action_token_ids if self.hparams.task == "forecast" else None,  # text: every token
            training=dict(self.hparams),
            adapter=None if lora is None else {"kind": "lora", **vars(lora)},
            best=None if self.best is None else {k: self.best[k] for k in ("epoch", "val_loss")},
            training_data=self._training_data(),
        )
        path = save_head(self.head, Path(self.hparams.save_to), card)
        if self.peft is not None:
            save_adapter(self.peft, path, lora)
        best = self.best
        print(f"head saved to {path} (" + ("last epoch" if best is None else
              f"epoch {best['epoch']}, val/loss {best['val_loss']:.4f}") + ")")
