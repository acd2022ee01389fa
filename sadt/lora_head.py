"""F_φ as a LoRA adapter (peft) on the LM's top layers plus the MLP head on the adapted hidden state.

The prior p(a|s) always comes from the adapter-free model (peft's `disable_adapter()`), so the
target p(x) exp(λ r(x)) never moves; only Q_φ and log Z_φ read the adapted hidden states.

What it costs against the MLP head: the adapted states need their own forward. In training, the
layers below the adapter are frozen, so what the first adapted layer reads is computed once per
trajectory (`TorchLM.layer_inputs`, kept by the trainer's feature cache) and each step runs only the
adapted top layers on it, with gradients (`adapted_states_from_layer_inputs`: on 30 layers with the top
2 adapted, a fifteenth of the forward). At search time `LoRALM` is a backend whose every call runs the
frozen and the adapted model (two KV caches): logits from the first, hidden states from the second,
so the search, the hybrid and SMC use it unchanged, at twice the LM token positions (counted).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from sadt.lm.backend import LMStats, TorchLM

ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class LoRAHeadConfig:
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    top_layers: int = 2  # adapt only the last k decoder layers (0: all of them)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or self.top_layers < 0 or not self.target_modules:
            raise ValueError(f"LoRA head needs r >= 1, alpha > 0, top_layers >= 0 and target modules, got {self}")


def add_lora(model, config: LoRAHeadConfig) -> PeftModel:
    """Wrap a Hugging Face causal LM with a zero-initialised LoRA adapter (dropout 0: deterministic)."""
    n = model.config.num_hidden_layers
    layers = list(range(n - config.top_layers, n)) if 0 < config.top_layers < n else None
    peft_config = LoraConfig(
        r=config.r, lora_alpha=config.alpha, target_modules=list(config.target_modules), lora_dropout=0.0,
        layers_to_transform=layers, bias="none",
    )
    return get_peft_model(model, peft_config)


def frozen(peft_model: PeftModel | None):
    """Context in which the wrapped LM is the frozen base (the prior's source)."""
    return peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext()


def adapted_path_states(
    peft_model: PeftModel, prompt_ids: Sequence[int], paths: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Adapted final hidden states of s_0..s_T along B paths (token ids), (B, T+1, H), differentiable.

    Rows are prompt + path, right-padded; a real position only attends to earlier real positions,
    so its output is exact. State s_t is the output at position P - 1 + t.
    """
    decoder = peft_model.get_base_model().model
    device = next(peft_model.parameters()).device
    P, T = len(prompt_ids), max(len(p) for p in paths)
    ids = torch.zeros(len(paths), P + T, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, path in enumerate(paths):
        row = list(prompt_ids) + list(path)
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, P+T, H)
    return out[:, P - 1 :]


def first_adapted_layer(peft_model: PeftModel) -> int:
    """The index of the lowest decoder layer the adapter changes (0 when it adapts them all)."""
    layers = peft_model.peft_config[peft_model.active_adapter].layers_to_transform
    return min(layers) if layers else 0


@contextlib.contextmanager
def only_layers_from(decoder, first: int):
    """Within it, `decoder` (a Hugging Face decoder stack) runs its layers from `first` up only: fed the
    inputs of layer `first` as `inputs_embeds`, it returns the same final states as the whole stack."""
    every_layer = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(every_layer)[first:])
    try:
        yield decoder
    finally:
        decoder.layers = every_layer


def adapted_states_from_layer_inputs(
    peft_model: PeftModel, prompt_inputs: torch.Tensor, path_inputs: torch.Tensor, lengths: Sequence[int]
) -> torch.Tensor:
    """`adapted_path_states` from what the first adapted layer reads (`TorchLM.layer_inputs`): the prompt's
    (P, H) and B right-padded paths' (B, T, H) with their `lengths`; only the adapted layers run, with
    gradients. Returns the adapted final states of s_0..s_T, (B, T+1, H); the same numbers (the frozen
    layers below are deterministic), for a fraction of the work when the adapter sits on top."""
    decoder = peft_model.get_base_model().model
    B, T = path_inputs.shape[:2]
    P = prompt_inputs.shape[0]
    inputs = torch.cat([prompt_inputs.expand(B, -1, -1), path_inputs], dim=1)
    mask = torch.ones(B, P + T, dtype=torch.long, device=inputs.device)
    mask[:, P:] = torch.arange(T, device=inputs.device)[None] < torch.as_tensor(lengths, device=inputs.device)[:, None]
    with only_layers_from(decoder, first_adapted_layer(peft_model)):
        out = decoder(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
    return out[:, P - 1:]


def lora_parameters(peft_model: PeftModel) -> list[torch.nn.Parameter]:
    return [p for name, p in peft_model.named_parameters() if "lora_" in name]


def save_adapter(peft_model: PeftModel, directory: str | Path, config: LoRAHeadConfig) -> None:
    """The adapter's safetensors under `directory/adapter/`, its config beside the head's sidecar."""
    peft_model.save_pretrained(Path(directory) / ADAPTER_DIR)
    (Path(directory) / ADAPTER_DIR / "sadt_lora.json").write_text(json.dumps(asdict(config), indent=2) + "\n")


def load_adapter(model, directory: str | Path) -> PeftModel:
    """The base LM with the adapter saved in `directory/adapter/`, frozen."""
    peft_model = PeftModel.from_pretrained(model, Path(directory) / ADAPTER_DIR)
    return peft_model.eval().requires_grad_(False)


@dataclass
class PairBatch:
    """A decode batch of the frozen model and one of the adapted model, row for row."""

    base: object
    adapted: object

    @property
    def logits(self) -> torch.Tensor:  # the prior's logits: frozen model
        return self.base.logits

    @property
    def hidden(self) -> torch.Tensor:  # what Q_φ reads: adapted model
        return self.adapted.hidden

    @property
    def rows(self) -> torch.Tensor:
        return self.base.rows

    @property
    def size(self) -> int:
        return self.base.size


class LoRALM:
    """The backend contract over a LoRA-adapted LM: prior from the frozen model, hidden from the adapted.

    Args:
        peft_model: the LM with its adapter (`load_adapter`), on `device`.
        lm: an existing `TorchLM` over the same (adapted) model, e.g. the trainer's, whose adapter
            must stay trainable; by default a new one, which freezes every weight.
    """

    def __init__(self, peft_model: PeftModel, device: str | torch.device = "cpu", lm: TorchLM | None = None) -> None:
        self.peft_model = peft_model
        self.lm = lm or TorchLM(peft_model.get_base_model(), device=device)
        self.device = self.lm.device
        self.stats: LMStats = self.lm.stats  # both forwards count

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    def prefill(self, prompt_ids: Sequence[int]) -> tuple:
        """The prompt's caches in the frozen and in the adapted model."""
        with frozen(self.peft_model):
            base = self.lm.prefill(prompt_ids)
        return base, self.lm.prefill(prompt_ids)

    def extend(self, prompt: tuple, prefixes, action_ids) -> PairBatch:
        with frozen(self.peft_model):
            base = self.lm.extend(prompt[0], prefixes, action_ids)
        return PairBatch(base, self.lm.extend(prompt[1], prefixes, action_ids))

    def step(self, batch: PairBatch, next_ids: torch.Tensor) -> PairBatch:
        with frozen(self.peft_model):
            base = self.lm.step(batch.base, next_ids)
        return PairBatch(base, self.lm.step(batch.adapted, next_ids))

    def select(self, batch: PairBatch, keep: torch.Tensor) -> PairBatch:
        return PairBatch(self.lm.select(batch.base, keep), self.lm.select(batch.adapted, keep))

    def path_states(self, prompt: tuple, paths, action_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted hidden states with the frozen model's action logits."""
        with frozen(self.peft_model):
            _, logits = self.lm.path_states(prompt[0], paths, action_ids)
        hidden, _ = self.lm.path_states(prompt[1], paths, action_ids)
        return hidden, logits
