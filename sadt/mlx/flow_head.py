"""The F_φ MLP head in MLX, read from the same safetensors checkpoint the torch trainer writes.

Same function as `sadt.flow_head.MLPFlowHead`: `Q_φ(s,·) = scale · MLP(h(s)) · E_A^T + b` and
`log Z_φ(c) = MLP_Z(h(s_0))`, with SiLU between linear layers. Only inference is ported.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from sadt.head_card import WEIGHTS_FILE, HeadCard, read_card


def _linear_layers(weights: dict[str, mx.array], prefix: str) -> list[tuple[mx.array, mx.array]]:
    """(weight, bias) of `prefix.{i}` in order: the torch Sequential's Linear layers (SiLU between)."""
    indices = sorted({int(k.split(".")[1]) for k in weights if k.startswith(prefix + ".")})
    return [(weights[f"{prefix}.{i}.weight"], weights[f"{prefix}.{i}.bias"]) for i in indices]


def _mlp(x: mx.array, layers: list[tuple[mx.array, mx.array]]) -> mx.array:
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if i < len(layers) - 1:
            x = x * mx.sigmoid(x)  # SiLU
    return x


class MLXFlowHead:
    """Q_φ and log Z_φ in MLX. Called with a torch tensor (the search's side) it answers in torch."""

    def __init__(self, weights: dict[str, mx.array]) -> None:
        self.action_embeddings = weights["action_embeddings"]  # (A, H)
        self.q_layers = _linear_layers(weights, "q_mlp")
        self.log_z_layers = _linear_layers(weights, "log_z_mlp")
        self.q_bias = weights["q_bias"]
        self.scale = 1.0 / math.sqrt(self.action_embeddings.shape[1])

    @classmethod
    def load(cls, directory: str | Path, lm_fingerprint: str,
             codec: dict | None = None) -> tuple[MLXFlowHead, HeadCard]:
        """The head in `directory` and its card, checked against the LM and codec like `load_head`."""
        from sadt.head_io import is_text_head, lm_action_embeddings

        directory = Path(directory)
        card = read_card(directory, lm_fingerprint, codec)
        weights = mx.load(str(directory / WEIGHTS_FILE))
        if is_text_head(card) and "action_embeddings" not in weights:  # left out on save: the LM's own
            weights["action_embeddings"] = mx.array(lm_action_embeddings(directory, lm_fingerprint).numpy())
        return cls(weights), card

    def q(self, hidden: mx.array) -> mx.array:
        """(..., H) -> (..., A)."""
        u = _mlp(hidden.astype(self.action_embeddings.dtype), self.q_layers)
        return self.scale * u @ self.action_embeddings.T + self.q_bias

    def log_z(self, prompt_hidden: mx.array) -> mx.array:
        """(B, H) -> (B,)."""
        return _mlp(prompt_hidden.astype(self.action_embeddings.dtype), self.log_z_layers)[..., 0]

    def __call__(self, hidden: torch.Tensor | mx.array):
        """Q_φ as the search's `value_head`: torch in, torch out (MLX in, MLX out)."""
        if isinstance(hidden, torch.Tensor):
            q = self.q(mx.array(hidden.detach().cpu().float().numpy()))
            return torch.from_numpy(np.array(q))
        return self.q(hidden)
