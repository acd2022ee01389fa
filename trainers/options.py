"""What a fit is asked to do, in small groups: the losses' weights, the optimiser, the LM features' caches.

`trainers.fit` reads them as nested options (`--model.losses.tb 1`, `--model.optimiser.lr 1e-3`,
`--model.features.store outputs/features`, `--model.head.value_form soft_ahead`, `--model.lora.r 8`); the head's
own options are `sadt.flow_head.FlowHeadConfig`, the adapter's `sadt.lora_head.LoRAHeadConfig`.

Before these groups every option sat flat under `model`; `MOVED_OPTIONS` says where each went, so an old
command line gets a message that names the new option, and a head card's flat `training` is read as groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sadt.config import check_finite

VARGRAD_DRAWS = ("all", "policy")
FORWARD_KL_DRAWS = ("prior", "prior_and_policy")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the balance losses (`sadt.losses`); at least one > 0.

    tb, subtb, db, vargrad: trajectory balance, sub-trajectory balance (geometric weight `subtb_weight`),
    detailed balance and VarGrad (the variance of log R − log P_F within a prompt's draws).
    vargrad_on: the draws VarGrad's variance is taken over: "all" the batch's, or "policy" only P_F's own
    (source `policy_sample`). The ESS of i.i.d. P_F pays for Var_q(log R − log q); a head too small to make it
    0 everywhere settles where its draws are, so over a mix of p's, replayed and tempered draws it minimises
    another variance. "policy" with rounds' exploration off and no replay is on-policy VarGrad.
    value: regression of Q_φ(s_t, a_t) on the tree's V̂(s_{t+1}).
    forward_kl: the importance-weighted cross-entropy on the buffers' draws from p (source `prior_sample`): per
    prompt the self-normalised estimate of KL(π*‖P_F) − KL(π*‖p) (`losses.weighted_cross_entropy`), the
    mass-covering term the balance losses on search trajectories lack. Logged whenever a batch holds such
    draws, weighted in or not: below 0 on validation prompts means P_F covers π* better than p there.
    forward_kl_on: the draws the forward KL reads: "prior", p's; "prior_and_policy", also P_F's own (source
    `policy_sample`), each weighed by p e^{λr}/q with the log q stored when it was drawn (reweighted wake-sleep's
    proposal update): the same KL, estimated from draws nearer π*, whose weights are less degenerate than p's.
    """

    tb: float = 1.0
    subtb: float = 0.0
    db: float = 0.0
    vargrad: float = 0.0
    value: float = 0.0
    forward_kl: float = 0.0
    subtb_weight: float = 0.9
    vargrad_on: str = "all"
    forward_kl_on: str = "prior"

    def __post_init__(self) -> None:
        check_finite(self, "model.losses")
        if self.vargrad_on not in VARGRAD_DRAWS:
            raise ValueError(f"model.losses `vargrad_on` must be one of {VARGRAD_DRAWS}, got {self.vargrad_on!r}")
        if self.forward_kl_on not in FORWARD_KL_DRAWS:
            raise ValueError(f"model.losses `forward_kl_on` must be one of {FORWARD_KL_DRAWS}, "
                             f"got {self.forward_kl_on!r}")
        weights = (self.tb, self.subtb, self.db, self.vargrad, self.value, self.forward_kl)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"model.losses weights must be >= 0 with at least one > 0, got {self}")


@dataclass(frozen=True)
class OptimiserConfig:
    """AdamW's learning rates per parameter group, and its decoupled weight decay on Q_φ (and the adapter).

    reward_weight_lr: β's (a handful of scales that start at 1: at the residual's lr Adam could move them by at
    most lr per step). log Z_φ(c) and β are never weight-decayed: they are levels and scales, not feature maps.
    """

    lr: float = 1e-3
    log_z_lr: float = 1e-2
    reward_weight_lr: float = 1e-2
    lora_lr: float = 1e-4
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_finite(self, "model.optimiser")
        for name in ("lr", "log_z_lr", "reward_weight_lr", "lora_lr"):  # 0 trains nothing, < 0 ascends the loss
            if not getattr(self, name) > 0:
                raise ValueError(f"model.optimiser `{name}` must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"model.optimiser `weight_decay` must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class FeatureConfig:
    """Where the frozen LM's per-trajectory features are kept (`trainers.features.LMFeatures`).

    prompt_cache_size: prompts whose KV cache is kept across steps.
    cache_mb: memory for hidden states and logits, so epochs after the first skip the LM (0: recompute).
    store: a folder that keeps them on disk across fits (`trainers.feature_store.FeatureStore`).
    """

    prompt_cache_size: int = 16
    cache_mb: int = 1024
    store: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_cache_size < 1 or self.cache_mb < 0:
            raise ValueError(f"model.features needs prompt_cache_size >= 1 and cache_mb >= 0, got {self}")


GROUPS = {"losses": LossWeights, "optimiser": OptimiserConfig}
# Flat options of old command lines and head cards -> (group, name).
MOVED_OPTIONS = {
    **{name: (group, name) for group, cls in GROUPS.items() for name in (f.name for f in dataclasses.fields(cls))},
    **{name: ("head", name) for name in ("hidden", "layers", "value_form", "reward_weight_bins", "residual",
                                         "reward_weight_positions")},
    "prompt_cache_size": ("features", "prompt_cache_size"), "feature_cache_mb": ("features", "cache_mb"),
    "feature_store": ("features", "store"), "lora_r": ("lora", "r"), "lora_alpha": ("lora", "alpha"),
    "lora_top_layers": ("lora", "top_layers"), "lora_lr": ("optimiser", "lora_lr"),
}


def grouped_options(flat: dict) -> dict:
    """A flat `training` dict (head cards written before the groups) as the module's nested options:
    `{"tb": 0, "lr": 1e-3}` -> `{"losses": {"tb": 0}, "optimiser": {"lr": 1e-3}}`. `adapter: lora` becomes a
    `lora` group; keys already nested pass through."""
    out: dict = {}
    for key, value in flat.items():
        if key == "adapter":
            if value == "lora":
                out.setdefault("lora", {})
            continue
        group, name = MOVED_OPTIONS.get(key, (None, key))
        if group is None:
            out[name] = value
        elif group != "lora" or flat.get("adapter") == "lora":
            out.setdefault(group, {})[name] = value
    return out


def moved_option_hint(message: str) -> str:
    """A parser's message with the new name of any old flat `--model.<name>` it rejects appended."""
    hints = [f"`--model.{old}` is now `--model.{group}.{name}`" for old, (group, name) in MOVED_OPTIONS.items()
             if f"--model.{old} " in f"{message} " or f"'{old}'" in message]
    return message if not hints else f"{message} ({'; '.join(hints)})"
