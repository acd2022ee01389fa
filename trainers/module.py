"""The LightningModule that trains F_φ (an MLP head on the frozen LM, or on a LoRA-adapted one) with balance losses.

Each step recomputes, with the frozen LM, the hidden state and the grammar-restricted prior of
every state along the batch's trajectories (one forward per prompt group, the prompt's KV cached
across steps), then applies the weighted losses of `sadt.losses` with λ chosen here: buffers store
raw rewards, so one buffer trains heads for any λ. Dropout is off (the LM is in eval mode and
frozen; the head has none; LoRA dropout is 0).

`adapter: lora` adds a peft LoRA adapter on the LM's top layers (`sadt.lora_head`): the prior still
comes from the frozen model (adapter disabled), the head reads the adapted hidden states, which a
differentiable forward of prompt + path computes every step (not cached).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from data.buffer import SOURCES
from sadt import losses
from sadt.codec import Codec, CodecConfig
from sadt.config import from_dict
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.grammar import DigitGrammar
from sadt.head_card import HeadCard
from sadt.head_io import load_head, save_head
from sadt.lm.base_model import lm_fingerprint, load_base_lm
from sadt.lora_head import LoRAHeadConfig, adapted_path_states, add_lora, frozen, lora_parameters, save_adapter
from sadt.partial_reward import digits_written, prompt_reward, shaping_value
from sadt.policy import masked_log_softmax
from sadt.rewards import ForecastReward, RewardConfig
from trainers.feature_store import FeatureStore


def prior_top_k(harvest_config: dict) -> int | None:
    """The top-k truncation of the prior the buffer's draws were made under (the target's p)."""
    search = harvest_config.get("search", {})
    return 1 if search.get("method") == "greedy" else search.get("top_k")


class FlowHeadModule(pl.LightningModule):
    """F_φ training.

    Args:
        lam: inverse temperature λ of the target p(x) exp(λ r(x)).
        base_model: folder of the converted base model (default: checkpoints/base).
        hidden, layers: MLP widths of the head.
        lr, log_z_lr: learning rates of Q_φ and of the conditional log Z_φ(c).
        tb, subtb, db, vargrad, value: weights of trajectory balance, sub-trajectory balance,
            detailed balance, VarGrad and regression of Q_φ(s_t, a_t) on the tree's V̂(s_{t+1}).
        forward_kl: weight of the importance-weighted cross-entropy on the buffers' draws from p
            (source `prior_sample`, `search.harvest` with `sampler: prior`): per prompt, the
            self-normalised estimate of KL(π*‖P_F) − KL(π*‖p) (`losses.weighted_cross_entropy`),
            the mass-covering term the balance losses on search trajectories lack. Logged as
            `forward_kl` whenever a batch holds such draws, weighted in or not: below 0 on the
            validation prompts means P_F covers π* better than p there.
        subtb_weight: the geometric weight w of SubTB.
        save_to: where the final head (safetensors + JSON sidecar) is written; `trainers.fit` refuses a
            folder that already holds a head before training, unless `overwrite` is set or it resumes a run.
        overwrite: let `trainers.fit` replace a head already in `save_to`.
        feature_cache_mb: memory for the frozen LM's per-trajectory hidden states and logits, so
            epochs after the first skip the LM (0 disables; past the budget, features are recomputed).
        feature_store: a folder that keeps those features on disk across fits (`FeatureStore`): a
            learning curve or another head on the same buffers runs the LM once per trajectory.
        adapter: "none" (the MLP head on frozen states) or "lora" (the head on LoRA-adapted states).
        lora_r, lora_alpha, lora_top_layers, lora_lr: the adapter's rank, scale numerator, how many
            top decoder layers it adapts, and its learning rate.
        weight_decay: AdamW's decoupled weight decay on the head's Q_φ MLP (and the adapter).
        keep_best: write the head (and adapter) of the validation epoch with the lowest `val/loss`
            rather than the last one; the sidecar's `best` names that epoch. Validation prompts are
            never trained on, so this is early stopping against over-fitting the training prompts.
        value_form: "none" (Q_φ is the MLP alone), or the task value Q_φ adds to the MLP's residual,
            rebuilt per prompt from the buffer's reward config (`sadt.partial_reward.VALUE_FORMS`):
            "digit_ahead" R⁺ᵈ (the completed values, the value being written completed and a
            seasonal-naive fill of the rest, scored like a finished forecast); "soft_ahead" V⁺ᵈ (R⁺ᵈ
            averaged over noisy guesses of the values not yet written, at the fit's λ; recommended).
        reward_weight_bins: with a value form, learn R's weight β per 1/n of the horizon's values
            completed (Q_φ = β(k/H)·R + residual; 0 keeps β = 1). β is never weight-decayed.
        residual: False drops the MLP on h(s) (needs a value form): Q_φ = β(k/H)·R + a per-action
            bias, reading no LM state; the ablation that asks what the residual adds.
        reward_weight_positions: with `reward_weight_bins`, split each β by the digits of the unfinished
            value written so far, clamped to this many columns (0: one β per bin). The codec's
            `max_digits` + 1 gives every digit position and a full value its own weight.
        init_from: a head directory whose weights start the fit (its `head_config` must be this fit's): an
            on-policy round (`trainers.rounds`) goes on from the last round's head.
        reward_weight_lr: β's learning rate. β is a handful of scales that start at 1, so at the
            residual's lr Adam could move them by at most lr per step (0.2 over a 200-step fit).
    """

    def __init__(
        self, lam: float = 5.0, base_model: str | None = None, hidden: int = 256, layers: int = 2,
        lr: float = 1e-3, log_z_lr: float = 1e-2, tb: float = 1.0, subtb: float = 0.0, db: float = 0.0,
        vargrad: float = 0.0, value: float = 0.0, forward_kl: float = 0.0, subtb_weight: float = 0.9,
        save_to: str = "outputs/heads/head", prompt_cache_size: int = 16, feature_cache_mb: int = 1024,
        adapter: str = "none", lora_r: int = 8, lora_alpha: float = 16.0, lora_top_layers: int = 2,
        lora_lr: float = 1e-4, weight_decay: float = 0.0, keep_best: bool = True, value_form: str = "none",
        reward_weight_bins: int = 0, reward_weight_lr: float = 1e-2, residual: bool = True,
        reward_weight_positions: int = 0, feature_store: str | None = None, overwrite: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        floats = {"lam": lam, "lr": lr, "log_z_lr": log_z_lr, "tb": tb, "subtb": subtb, "db": db, "vargrad": vargrad,
                  "value": value, "forward_kl": forward_kl, "subtb_weight": subtb_weight, "lora_alpha": lora_alpha,
                  "lora_lr": lora_lr, "weight_decay": weight_decay, "reward_weight_lr": reward_weight_lr}
        for name, number in floats.items():
            if not math.isfinite(number):
                raise ValueError(f"model `{name}` must be a finite number, got {number}")
        if not lam > 0:
            raise ValueError(f"`lam` must be > 0, got {lam}")
        for name in ("lr", "log_z_lr", "lora_lr", "reward_weight_lr"):  # 0 trains nothing, < 0 ascends the loss
            if not floats[name] > 0:
                raise ValueError(f"model `{name}` must be > 0, got {floats[name]}")
        weights = (tb, subtb, db, vargrad, value, forward_kl)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError("loss weights must be >= 0 with at least one > 0")
        if adapter not in ("none", "lora"):
            raise ValueError(f"`adapter` must be 'none' or 'lora', got {adapter!r}")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
        if value_form != "none" and adapter != "none":
            raise ValueError("`value_form` is built for the MLP head only (adapter 'none')")
        self.save_hyperparameters()
        self.lm, self.tokenizer = load_base_lm(base_model)  # frozen, and not a submodule: never checkpointed
        self.fingerprint = lm_fingerprint(base_model)
        self.action_token_ids = Codec(self.tokenizer).action_token_ids
        embeddings = self.lm.head.weight[self.action_token_ids]
        head_config = FlowHeadConfig(hidden=hidden, layers=layers, value_form=value_form,
                                     reward_weight_bins=reward_weight_bins, residual=residual,
                                     reward_weight_positions=reward_weight_positions)
        self.head = MLPFlowHead(embeddings, head_config)
        if init_from is not None:
            self.head.load_state_dict(self._initial_weights(init_from, head_config))
        self.lora_config = self.peft = None
        if adapter == "lora":
            self.lora_config = LoRAHeadConfig(r=lora_r, alpha=lora_alpha, top_layers=lora_top_layers)
            self.peft = add_lora(self.lm.model, self.lora_config)  # injected in place: `frozen()` gives the prior
            self.lora_params = torch.nn.ParameterList(lora_parameters(self.peft))  # trained and checkpointed
        self.prompt_cache: OrderedDict[tuple, object] = OrderedDict()
        self.feature_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (prompt, actions) -> (h, logits)
        self.feature_cache_bytes = 0
        self.feature_store = None if feature_store is None else FeatureStore(feature_store, self.fingerprint)
        self.grammar: DigitGrammar | None = None
        self.codec: Codec | None = None
        self.top_k: int | None = None  # the prior's truncation, from the buffer (`prior_top_k`)
        self.rewards: dict[tuple, ForecastReward] = {}  # prompt -> its reward (reward_of)
        self.shaping_cache: dict[tuple, torch.Tensor] = {}  # (prompt, actions) -> (3, T, A): `shaping` rows
        self.buffer_meta: dict = {}
        self.prior_draws: dict[int, tuple[float, int]] = {}  # prompt id -> (log Σ_j exp(λ r_j), n) over its p draws
        self.best: dict | None = None  # {"epoch", "val_loss", "state"}: the kept head (keep_best)
        self.val_sums = torch.zeros(2, dtype=torch.float64)  # Σ batch loss · B, Σ B over this validation epoch

    def _initial_weights(self, directory: str, config: FlowHeadConfig) -> dict:
        """The weights of the head in `directory`, refused unless its LM and config are this fit's."""
        head, card = load_head(directory, self.fingerprint)
        if head.config != config:
            raise ValueError(f"model.init_from {directory}: its head_config {card.head_config} is not this fit's "
                             f"{vars(config)}; set the fit's head options to match")
        return head.state_dict()

    def setup(self, stage: str) -> None:
        self.attach(self.trainer.datamodule)

    def attach(self, datamodule) -> None:
        """Read the buffers' grammar, codec and reward config, and the normalisers of their draws from p
        (`setup` calls this; outside a Trainer, call it with a set-up `BufferDataModule`)."""
        meta = datamodule.meta
        if meta.get("task") == "text":
            raise ValueError(f"{', '.join(map(str, datamodule.paths))}: a text-task buffer (search.text_task); "
                             f"trainers.fit trains the forecasting head, on digit buffers from search.harvest")
        if meta.get("action_token_ids") != self.action_token_ids:
            raise ValueError(f"{', '.join(map(str, datamodule.paths))}: the buffer's action tokens differ from this "
                             f"LM's codec; harvest with this LM")
        config = meta["config"]
        self.grammar = DigitGrammar(horizon=config["horizon"], max_digits=config["codec"]["max_digits"])
        self.codec = Codec(self.tokenizer, from_dict(config["codec"], CodecConfig))
        self.top_k = prior_top_k(config)
        self.buffer_meta = meta
        self.prior_draws = self._prior_draw_normalisers(datamodule)
        if self.hparams.forward_kl and not self.prior_draws:
            raise ValueError(f"`forward_kl` needs draws from p (source 'prior_sample') in the buffers "
                             f"{datamodule.paths}: harvest them with `sampler: prior`")

    def _prior_draw_normalisers(self, datamodule) -> dict[int, tuple[float, int]]:
        """Per prompt, log Σ_j exp(λ r_j) and n over its draws from p, for the self-normalised weights."""
        rewards: dict[int, list[float]] = {}
        for dataset in (datamodule.train_set, datamodule.val_set):
            for x in dataset.items:
                if x["source"] == SOURCES["prior_sample"]:
                    rewards.setdefault(x["prompt_id"], []).append(x["reward"])
        lam = self.hparams.lam
        return {k: (float(torch.logsumexp(lam * torch.tensor(r, dtype=torch.float64), 0)), len(r))
                for k, r in rewards.items()}

    def prior_draw_weights(self, batch: dict) -> torch.Tensor:
        """ω_i = n exp(λ r_i) / Σ_j exp(λ r_j) over the prompt's n draws from p; 0 for other trajectories: (B,)."""
        rows = (batch["source"] == SOURCES["prior_sample"]).nonzero().flatten()
        weights = torch.zeros(len(batch["source"]), dtype=torch.float64)
        if len(rows):
            norm = torch.tensor([self.prior_draws[int(p)] for p in batch["prompt_index"][rows]], dtype=torch.float64)
            log_norm, n = norm.unbind(dim=1)  # (k,), (k,)
            weights[rows] = n * torch.exp(self.hparams.lam * batch["reward"][rows].double() - log_norm)
        return weights

    # -- features from the frozen LM ---------------------------------------------------------

    def _prompt(self, tokens: tuple):
        if tokens not in self.prompt_cache:
            self.prompt_cache[tokens] = self.lm.prefill(list(tokens))
            if len(self.prompt_cache) > self.hparams.prompt_cache_size:
                self.prompt_cache.popitem(last=False)
        return self.prompt_cache[tokens]

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) of s_0..s_{T-1}, prompt states (B, H), log p(·|s_t) (B, T, A)."""
        actions, mask = batch["actions"], batch["mask"]
        B, T = actions.shape
        hidden = torch.zeros(B, T, self.lm.hidden_size)
        logits = torch.zeros(B, T, len(self.action_token_ids))
        keys = [(prompt, tuple(actions[r][mask[r]].tolist())) for r, prompt in enumerate(batch["prompts"])]
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            stored = self._stored_features(key)
            if stored is not None:
                h, lg = stored
                hidden[row, : len(h)], logits[row, : len(h)] = h, lg
            else:
                groups.setdefault(key[0], []).append(row)
        for prompt, rows in groups.items():
            paths = [[self.action_token_ids[a] for a in keys[r][1]] for r in rows]
            with frozen(self.peft):
                h, lg = self.lm.path_states(self._prompt(prompt), paths, self.action_token_ids)  # (n, T'+1, ·)
            for i, row in enumerate(rows):
                n = len(keys[row][1])  # states s_0..s_{n-1} of this trajectory
                hidden[row, :n], logits[row, :n] = h[i, :n].float(), lg[i, :n].float()
                self._remember(keys[row], hidden[row, :n].clone(), logits[row, :n].clone())
                if self.feature_store is not None:
                    self.feature_store.put(keys[row], hidden[row, :n], logits[row, :n])
        allowed = torch.zeros(B, T, len(self.action_token_ids), dtype=torch.bool)
        state = self.grammar.initial(B)
        for t in range(T):
            allowed[:, t] = self.grammar.mask(state)
            state = self.grammar.advance(state, actions[:, t].clamp(min=0))
        allowed |= ~mask[..., None]  # padded steps: any finite prior (the losses ignore them)
        log_prior = masked_log_softmax(logits, allowed, self.top_k)  # the prior the harvest sampled under
        if self.peft is not None:
            hidden = self._adapted_hidden(batch["prompts"], keys, T)
            return hidden, hidden[:, 0], log_prior
        return hidden.clone(), hidden[:, 0].clone(), log_prior  # clones: leave inference mode

    def _adapted_hidden(self, prompts: list[tuple], keys: list[tuple], T: int) -> torch.Tensor:
        """The LoRA-adapted hidden states of s_0..s_{T-1}, (B, T, H), with gradients to the adapter."""
        per_row: list[torch.Tensor | None] = [None] * len(keys)
        groups: dict[tuple, list[int]] = {}
        for row, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(row)
        for prompt, rows in groups.items():
            paths = [[self.action_token_ids[a] for a in keys[r][1]] for r in rows]
            h = adapted_path_states(self.peft, list(prompt), paths).float()  # (n, T'+1, H)
            for i, row in enumerate(rows):
                per_row[row] = h[i, :T]
        return torch.nn.utils.rnn.pad_sequence(per_row, batch_first=True)  # the longest trajectory has T states

    def _stored_features(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A trajectory's (hidden, logits) from memory, else from the feature store (then kept in memory)."""
        if key in self.feature_cache:
            return self.feature_cache[key]
        stored = None if self.feature_store is None else self.feature_store.get(key)
        if stored is not None:
            self._remember(key, *stored)
        return stored

    def _remember(self, key: tuple, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        size = hidden.nbytes + logits.nbytes
        if self.feature_cache_bytes + size <= self.hparams.feature_cache_mb * 2**20:
            self.feature_cache[key] = (hidden, logits)
            self.feature_cache_bytes += size

    def shaping(self, batch: dict) -> torch.Tensor:
        """R(s_t·a), k(s_t·a)/H and the digits of s_t's unfinished value for every step and action,
        (3, B, T, A); 0 on padded steps (sadt.partial_reward)."""
        actions, mask = batch["actions"], batch["mask"]
        out = torch.zeros(3, *actions.shape, len(self.action_token_ids))
        for row, prompt in enumerate(batch["prompts"]):
            path = tuple(actions[row][mask[row]].tolist())
            if (prompt, path) not in self.shaping_cache:
                states = [path[:t] for t in range(len(path))]
                hp = self.hparams
                r, share = shaping_value(self.codec, self.reward_of(prompt), states, hp.value_form, hp.lam)
                written = digits_written(self.codec, states) if hp.reward_weight_positions else np.zeros(len(states))
                position = np.broadcast_to(written[:, None], r.shape)  # read only by a per-position β
                self.shaping_cache[prompt, path] = torch.as_tensor(np.stack([r, share, position]), dtype=torch.float32)
            out[:, row, : len(path)] = self.shaping_cache[prompt, path]
        return out

    def reward_of(self, prompt: tuple) -> ForecastReward:
        """The buffer's reward for one prompt, rebuilt from its own values (cached)."""
        if prompt not in self.rewards:
            config = self.buffer_meta["config"]
            reward_config = from_dict(config.get("reward", {}), RewardConfig)
            self.rewards[prompt] = prompt_reward(self.codec, prompt, config["horizon"], reward_config)
        return self.rewards[prompt]

    # -- losses ------------------------------------------------------------------------------

    def q_values(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q_φ(s_t, ·) (B, T, A) along the batch's trajectories, log p(·|s_t) (B, T, A) and log Z_φ(c) (B,)."""
        hidden, prompt_hidden, log_prior = self.features(batch)
        q = self.head.q(hidden)
        if self.head.config.shaped:
            r, share, position = self.shaping(batch).to(q)
            q = q + self.head.weigh_reward(r, share, position)
        return q, log_prior, self.head.log_z(prompt_hidden)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        q, log_prior, log_z = self.q_values(batch)
        lam, hp = self.hparams.lam, self.hparams
        args = (q, log_prior, batch["actions"], batch["mask"])
        out = {"tb": losses.trajectory_balance(*args, log_z, batch["reward"], lam).mean(), "log_z": log_z.mean()}
        total = hp.tb * out["tb"]
        if hp.subtb:
            out["subtb"] = losses.subtrajectory_balance(*args, log_z, batch["reward"], lam, hp.subtb_weight).mean()
            total = total + hp.subtb * out["subtb"]
        if hp.db:
            out["db"] = losses.detailed_balance(*args, log_z, batch["reward"], lam).mean()
            total = total + hp.db * out["db"]
        out["var_log_ratio"] = losses.vargrad(*args, batch["reward"], batch["prompt_index"], lam)
        if hp.vargrad:
            total = total + hp.vargrad * out["var_log_ratio"]
        if hp.value:
            out["value"] = losses.value_regression(q, batch["actions"], batch["mask"], batch["tree_values"])
            total = total + hp.value * out["value"]
        n_prior = int((batch["source"] == SOURCES["prior_sample"]).sum())
        if n_prior:  # mean over the batch's draws from p: each prompt's draws average its SNIS estimate
            weights = self.prior_draw_weights(batch).to(q)
            out["forward_kl"] = losses.weighted_cross_entropy(*args, weights, lam).sum() / n_prior
            total = total + hp.forward_kl * out["forward_kl"]
        out["loss"] = total
        return out

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
        q_params = [p for n, p in self.head.named_parameters() if not n.startswith(("log_z", "reward_weight"))]
        groups = [
            {"params": q_params, "lr": self.hparams.lr},
            {"params": self.head.log_z_mlp.parameters(), "lr": self.hparams.log_z_lr},
        ]
        if self.hparams.reward_weight_bins:  # β is R's scale, not a feature map: no shrinkage towards 0
            beta = [self.head.reward_weight]
            groups.append({"params": beta, "lr": self.hparams.reward_weight_lr, "weight_decay": 0.0})
        if self.peft is not None:
            groups.append({"params": list(self.lora_params), "lr": self.hparams.lora_lr})
        groups[1]["weight_decay"] = 0.0  # log Z_φ(c) is a level, not a feature map: no shrinkage towards 0
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

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
        config = self.buffer_meta.get("config", {})
        card = HeadCard.for_head(
            self.head, lm_fingerprint=self.fingerprint, lam=self.hparams.lam, gamma=self.buffer_meta.get("gamma"),
            codec=config.get("codec"), action_token_ids=self.action_token_ids, training=dict(self.hparams),
            adapter=None if self.lora_config is None else {"kind": "lora", **vars(self.lora_config)},
            best=None if self.best is None else {k: self.best[k] for k in ("epoch", "val_loss")},
            training_data=self._training_data(),
        )
        path = save_head(self.head, Path(self.hparams.save_to), card)
        if self.peft is not None:
            save_adapter(self.peft, path, self.lora_config)
        best = self.best
        print(f"head saved to {path} (" + ("last epoch" if best is None else
              f"epoch {best['epoch']}, val/loss {best['val_loss']:.4f}") + ")")
