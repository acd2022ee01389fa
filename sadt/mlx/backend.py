"""MLX LM backend through `mlx-lm`, with the torch backend's contract (`sadt.lm.backend`).

The transformer runs in MLX; what the search reads per state (next-token logits over the A
actions and the last hidden state) crosses to torch as small CPU tensors, so the tree, the
rollouts, SMC and the losses are the same code for both backends (on Apple silicon the copy is
within unified memory).

Ragged batches: mlx-lm's attention takes its mask and RoPE offset from the layer cache
(`cache.make_mask`, `cache.offset`), so `_RowsCache` supplies both: a boolean key mask per row
(padding after a short prefix is never attended) and a per-row RoPE offset (`mx.fast.rope`
takes one offset per batch row), which keeps every real token at its true position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from sadt.lm.backend import LMStats


class _RowsState:
    """What all layers of one forward share: the attention mask and the rows' RoPE offsets."""

    def __init__(self, key_valid: mx.array) -> None:
        self.key_valid = key_valid  # (B, S) True where a cached key is a real token
        self.mask: mx.array | None = None  # (B, 1, N, S + N) for the forward in flight
        self.offset: mx.array | int = 0  # position of each row's first incoming token


class _RowsCache:
    """One layer's keys/values for B rows, in the interface mlx-lm's attention calls."""

    def __init__(self, keys: mx.array, values: mx.array, state: _RowsState) -> None:
        self.keys, self.values, self.state = keys, values, state

    @property
    def offset(self):
        return self.state.offset

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.concatenate([self.keys, keys], axis=2)
        self.values = mx.concatenate([self.values, values], axis=2)
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> mx.array:
        return self.state.mask


@dataclass
class MLXPromptCache:
    ids: list[int]
    kv: list[tuple[mx.array, mx.array]]  # per layer (1, kv_heads, P, head_dim)
    hidden: torch.Tensor  # (H,) last position's final hidden state

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class MLXDecodeBatch:
    layers: list[_RowsCache]
    state: _RowsState
    next_position: torch.Tensor  # (B,)
    action_ids: mx.array  # (A,)
    logits: torch.Tensor  # (B, A) float32
    hidden: torch.Tensor  # (B, H) float32
    rows: torch.Tensor  # (B,) original row index of each live row

    @property
    def size(self) -> int:
        return int(self.logits.shape[0])


def _to_torch(array: mx.array) -> torch.Tensor:
    return torch.from_numpy(np.array(array.astype(mx.float32)))


def _causal_block(key_valid: mx.array, n: int) -> mx.array:
    """(B, 1, n, S + n): every cached real key, then causal attention among the n new tokens."""
    B = key_valid.shape[0]
    old = mx.broadcast_to(key_valid[:, None, None, :], (B, 1, n, key_valid.shape[1]))
    new = mx.broadcast_to(mx.tril(mx.ones((n, n), dtype=mx.bool_))[None, None], (B, 1, n, n))
    return mx.concatenate([old, new], axis=-1)


class MLXLM:
    """An mlx-lm causal LM behind the search's backend contract (see `sadt.lm.backend.TorchLM`).

    Args:
        model: an mlx-lm `Model` (`.model` the decoder returning normed hidden states).
    """

    device = torch.device("cpu")  # where the torch side (search, grammar) lives

    def __init__(self, model) -> None:
        self.model = model
        self.decoder = model.model
        self.stats = LMStats()
        if getattr(model.args, "tie_word_embeddings", True):
            self.head_weight = self.decoder.embed_tokens.weight  # (V, H)
        else:
            self.head_weight = model.lm_head.weight
        self._layers = len(self.decoder.layers)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MLXLM:
        """Load a Hugging Face folder (config.json + model*.safetensors) with mlx-lm.

        transformers 5 writes RoPE's θ under `rope_parameters`, which mlx-lm 0.32 does not read
        (it would silently use its default 10 000); pass it through explicitly.
        """
        from mlx_lm.utils import load_model

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        overrides = {}
        rope = config.get("rope_parameters") or {}
        if "rope_theta" in rope and "rope_theta" not in config:
            overrides["rope_theta"] = rope["rope_theta"]
        model, _ = load_model(path, model_config=overrides)
        return cls(model)

    @property
    def hidden_size(self) -> int:
        return int(self.head_weight.shape[1])

    def _action_logits(self, hidden: mx.array, action_ids: mx.array) -> mx.array:
        return hidden @ self.head_weight[action_ids].T  # (..., A)

    def _forward(self, ids: mx.array, layers: list[_RowsCache], state: _RowsState, offset) -> mx.array:
        state.mask = _causal_block(state.key_valid, ids.shape[1])
        state.offset = offset
        out = self.decoder(ids, cache=layers)  # (B, T, H)
        self.stats.forward_calls += 1
        return out

    def prefill(self, prompt_ids: Sequence[int]) -> MLXPromptCache:
        if len(prompt_ids) == 0:
            raise ValueError("prefill needs a non-empty prompt")
        ids = mx.array([list(prompt_ids)])
        state = _RowsState(mx.zeros((1, 0), dtype=mx.bool_))
        empty = self._empty_kv()
        layers = [_RowsCache(k, v, state) for k, v in empty]
        out = self._forward(ids, layers, state, 0)
        self.stats.tokens += len(prompt_ids)
        kv = [(layer.keys, layer.values) for layer in layers]
        mx.eval(out, kv)
        return MLXPromptCache(list(prompt_ids), kv, _to_torch(out[0, -1]))

    def _empty_kv(self) -> list[tuple[mx.array, mx.array]]:
        attn = self.decoder.layers[0].self_attn
        head_dim = self.decoder.args.hidden_size // self.decoder.args.num_attention_heads
        head_dim = getattr(self.decoder.args, "head_dim", None) or head_dim
        shape = (1, attn.n_kv_heads, 0, head_dim)
        dtype = self.head_weight.dtype
        return [(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype)) for _ in range(self._layers)]

    def _rows(self, prompt: MLXPromptCache, batch: int) -> tuple[list[_RowsCache], _RowsState]:
        state = _RowsState(mx.ones((batch, prompt.length), dtype=mx.bool_))
        layers = [
            _RowsCache(mx.broadcast_to(k, (batch, *k.shape[1:])), mx.broadcast_to(v, (batch, *v.shape[1:])), state)
            for k, v in prompt.kv
        ]
        return layers, state

    @staticmethod
    def _right_padded(sequences: Sequence[Sequence[int]], length: int) -> mx.array:
        ids = np.zeros((len(sequences), length), dtype=np.int32)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = list(s)
        return mx.array(ids)

    def extend(
        self, prompt: MLXPromptCache, prefixes: Sequence[Sequence[int]], action_ids: Sequence[int] | torch.Tensor
    ) -> MLXDecodeBatch:
        """Score B right-padded prefixes (token ids after the prompt) in one forward."""
        B, P = len(prefixes), prompt.length
        if B == 0:
            raise ValueError("extend needs at least one prefix")
        actions = mx.array(np.asarray(torch.as_tensor(action_ids).tolist(), dtype=np.int32))
        lengths = np.array([len(p) for p in prefixes])
        T = int(lengths.max())
        layers, state = self._rows(prompt, B)
        hidden = mx.broadcast_to(mx.array(prompt.hidden.numpy())[None], (B, prompt.hidden.shape[0]))
        if T > 0:
            out = self._forward(self._right_padded(prefixes, T), layers, state, P)
            self.stats.tokens += int(lengths.sum())
            state.key_valid = mx.concatenate([state.key_valid, mx.array(np.arange(T)[None] < lengths[:, None])], axis=1)
            last = mx.array(np.maximum(lengths - 1, 0))
            at_last = mx.take_along_axis(out, last[:, None, None], axis=1)[:, 0]  # (B, H)
            hidden = mx.where(mx.array(lengths > 0)[:, None], at_last.astype(hidden.dtype), hidden)
        return self._batch(layers, state, torch.as_tensor(P + lengths), actions, hidden, torch.arange(B))

    def _batch(self, layers, state, next_position, actions, hidden, rows) -> MLXDecodeBatch:
        logits = self._action_logits(hidden, actions)
        mx.eval(logits, hidden, [(layer.keys, layer.values) for layer in layers], state.key_valid)
        return MLXDecodeBatch(layers, state, next_position, actions, _to_torch(logits), _to_torch(hidden), rows)

    def step(self, batch: MLXDecodeBatch, next_ids: torch.Tensor) -> MLXDecodeBatch:
        """Append one token (vocabulary id, (B,)) to every row with one forward."""
        ids = mx.array(next_ids.numpy().astype(np.int32))[:, None]
        offset = mx.array(batch.next_position.numpy().astype(np.int32))
        out = self._forward(ids, batch.layers, batch.state, offset)
        self.stats.tokens += batch.size
        batch.state.key_valid = mx.concatenate([batch.state.key_valid, mx.ones((batch.size, 1), dtype=mx.bool_)], 1)
        return self._batch(batch.layers, batch.state, batch.next_position + 1, batch.action_ids, out[:, -1], batch.rows)

    def select(self, batch: MLXDecodeBatch, keep: torch.Tensor) -> MLXDecodeBatch:
        """Keep only the rows `keep` (indices; repeats copy a row, as SMC's resampling needs)."""
        rows = mx.array(keep.cpu().numpy().astype(np.int32))
        state = _RowsState(batch.state.key_valid[rows])
        layers = [_RowsCache(layer.keys[rows], layer.values[rows], state) for layer in batch.layers]
        return MLXDecodeBatch(
            layers, state, batch.next_position[keep], batch.action_ids, batch.logits[keep], batch.hidden[keep],
            batch.rows[keep],
        )

    def path_states(
        self, prompt: MLXPromptCache, paths: Sequence[Sequence[int]], action_ids: Sequence[int] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T+1, H) and action logits (B, T+1, A) of every state along B paths."""
        if len(paths) == 0:
            raise ValueError("path_states needs at least one path")
        actions = mx.array(np.asarray(torch.as_tensor(action_ids).tolist(), dtype=np.int32))
        B, T = len(paths), max(len(p) for p in paths)
        hidden = mx.broadcast_to(mx.array(prompt.hidden.numpy())[None, None], (B, 1, prompt.hidden.shape[0]))
        if T > 0:
            layers, state = self._rows(prompt, B)
            out = self._forward(self._right_padded(paths, T), layers, state, prompt.length)
            self.stats.tokens += sum(len(p) for p in paths)
            hidden = mx.concatenate([hidden.astype(out.dtype), out], axis=1)
        return _to_torch(hidden), _to_torch(self._action_logits(hidden, actions))
