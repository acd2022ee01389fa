"""Torch LM backend: prompt KV cache once, many prefixes per forward, logits over the actions only.

The contract (DESIGN §4), shared with the MLX backend:

- `prefill(prompt_ids)` runs the prompt once and keeps its KV cache (`PromptCache`).
- `extend(prompt, prefixes, action_ids)` scores B continuations of the prompt in one forward,
  reusing the prompt's cache; it returns, for each prefix, the logits of the next token over the
  action vocabulary (B, A) and the last hidden state (B, H) that a flow head reads.
- `step(batch, next_ids)` appends one token to every row (one forward) for rollouts.
- `stats` counts forward calls and real token positions processed (padding is not counted).

Only the action tokens' rows of the output embedding are multiplied, so a decode step costs the
transformer plus a (H, A) product instead of the full (H, vocab) head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class LMStats:
    forward_calls: int = 0  # LM forward passes
    tokens: int = 0  # real token positions processed, prompt prefill included

    def reset(self) -> None:
        self.forward_calls = 0
        self.tokens = 0


@dataclass
class PromptCache:
    """The prompt's KV cache at batch 1, plus its next-token output."""

    ids: torch.Tensor  # (P,)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (1, heads, P, head_dim)
    hidden: torch.Tensor  # (H,) last position's final hidden state

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class DecodeBatch:
    """B rows continuing one prompt: their KV cache, padding mask and next-token outputs."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # (B, P + T) 1 for real positions, 0 for padding
    next_position: torch.Tensor  # (B,) position id of each row's next token
    action_ids: torch.Tensor  # (A,) vocabulary ids of the actions
    logits: torch.Tensor  # (B, A) next-token logits over the actions
    hidden: torch.Tensor  # (B, H) final hidden state at each row's last real position
    rows: torch.Tensor = field(default=None)  # (B,) original row index of each live row

    @property
    def size(self) -> int:
        return int(self.logits.shape[0])


class GrowingLayer(DynamicLayer):
    """A KV cache layer that appends in place into spare room instead of `torch.cat` on every step.

    `DynamicLayer` copies every row's whole cache on each decode step, O(B·L) bytes per token: at
    50 rows of a 400-token prompt that copy is half of a CPU step. Here the first write into a
    shared prefix (the prompt's cache, expanded over the rows) allocates exactly, so a one-shot
    forward wastes nothing; a later write that runs out of room reallocates with a quarter more
    (at least 64 positions), so a decode step writes only its own token. `keys`/`values` are views
    of the store's first L positions; if anything replaces them (the base class's reorder), the
    next update copies from them into a fresh store.
    """

    def __init__(self) -> None:
        super().__init__()
        self._key_store: torch.Tensor | None = None
        self._value_store: torch.Tensor | None = None

    def _owned(self) -> bool:
        return all(store is not None and view.data_ptr() == store.data_ptr() and view.shape[0] == store.shape[0]
                   for store, view in ((self._key_store, self.keys), (self._value_store, self.values)))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.keys.numel() == 0:  # nothing cached: hold the states as given
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        L, T = self.keys.shape[-2], key_states.shape[-2]
        owned = self._owned()
        if not owned or self._key_store.shape[-2] < L + T:
            room = L + T + (max(64, (L + T) // 4) if owned else 0)
            self._key_store, self._value_store = _copied(self.keys, room), _copied(self.values, room)
        self._key_store[:, :, L : L + T] = key_states
        self._value_store[:, :, L : L + T] = value_states
        self.keys, self.values = self._key_store[:, :, : L + T], self._value_store[:, :, : L + T]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (repeats allowed: SMC's resampling), with their spare room."""
        if self.get_seq_length() == 0 or not self._owned():
            return super().batch_select_indices(indices)
        L = self.keys.shape[-2]
        self._key_store, self._value_store = self._key_store[indices], self._value_store[indices]
        self.keys, self.values = self._key_store[:, :, :L], self._value_store[:, :, :L]


def _copied(view: torch.Tensor, room: int) -> torch.Tensor:
    """A new (B, heads, room, dim) store whose first L positions hold `view`."""
    B, heads, L, dim = view.shape
    store = view.new_empty(B, heads, room, dim)
    store[:, :, :L] = view
    return store


class LMBackend(Protocol):
    """What the search, SMC and the trainer call: `TorchLM` here, `sadt.mlx.backend.MLXLM` in MLX."""

    device: torch.device  # where the torch side (logits, hidden, grammar) lives
    stats: LMStats

    def prefill(self, prompt_ids: Sequence[int]): ...
    def extend(self, prompt, prefixes: Sequence[Sequence[int]], action_ids): ...
    def step(self, batch, next_ids: torch.Tensor): ...
    def select(self, batch, keep: torch.Tensor): ...
    def path_states(self, prompt, paths: Sequence[Sequence[int]], action_ids): ...


class TorchLM:
    """A frozen Hugging Face causal LM behind the search's backend contract.

    Args:
        model: any `transformers` causal LM whose logits are `lm_head(final_hidden)` (no soft-capping).
        device: where to run; the model is moved there.
    """

    def __init__(self, model, device: str | torch.device = "cpu") -> None:
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError("TorchLM does not support models with final_logit_softcapping")
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.decoder = model.base_model
        self.head = model.get_output_embeddings()
        self.stats = LMStats()
        # The KV layer of every decode batch; transformers' `DynamicLayer` (concatenating every step) only for the
        # throughput benchmark's before/after.
        self.cache_layer: type[DynamicLayer] = GrowingLayer

    def to(self, device: str | torch.device) -> TorchLM:
        """Move the model (a trainer on a GPU moves its frozen LM next to the head); caches made before stay behind."""
        self.model.to(device)
        self.device = torch.device(device)
        return self

    @property
    def context_window(self) -> int | None:
        """The most positions the model attends over (prompt + generated), when its config says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def kv_bytes_per_position(self) -> int:
        """Bytes the KV cache holds per sequence position, over every layer: 2 · layers · KV heads · head dim ·
        the dtype's size (a batch of B rows of length L holds B · L times this)."""
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return 2 * c.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> TorchLM:
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(path, dtype=dtype), device=device)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _action_logits(self, hidden: torch.Tensor, action_ids: torch.Tensor) -> torch.Tensor:
        if self._is_vocabulary(action_ids):  # a text task: the LM's own head, no (V, H) gather per step
            return self.head(hidden)
        weight = self.head.weight[action_ids]  # (A, H)
        logits = hidden @ weight.T  # (B, A)
        if self.head.bias is not None:
            logits = logits + self.head.bias[action_ids]
        return logits

    def _is_vocabulary(self, action_ids: torch.Tensor) -> bool:
        """Whether the actions are every token of the head, in order (`range(V)`)."""
        V = self.head.weight.shape[0]
        return action_ids.numel() == V and bool(torch.equal(action_ids, torch.arange(V, device=action_ids.device)))

    def _forward(self, ids, cache, attention_mask, positions) -> torch.Tensor:
        out = self.decoder(
            input_ids=ids, past_key_values=cache, attention_mask=attention_mask, position_ids=positions, use_cache=True
        )
        self.stats.forward_calls += 1
        return out.last_hidden_state  # (B, T, H)

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int]) -> PromptCache:
        """Run the prompt once; its cache is shared by every later `extend`."""
        if len(prompt_ids) == 0:
            raise ValueError("prefill needs a non-empty prompt")
        ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=self.device)
        cache = DynamicCache()
        hidden = self._forward(ids[None], cache, None, None)
        self.stats.tokens += ids.numel()
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return PromptCache(ids=ids, kv=kv, hidden=hidden[0, -1])

    @torch.inference_mode()
    def extend(
        self, prompt: PromptCache, prefixes: Sequence[Sequence[int]], action_ids: Sequence[int] | torch.Tensor
    ) -> DecodeBatch:
        """Score B prefixes (token ids after the prompt, ragged) in one forward.

        Prefixes are right-padded: a real token only attends to earlier positions, all real, so
        its output is exact; the padding is masked out of every later `step`.
        """
        B, P = len(prefixes), prompt.length
        if B == 0:
            raise ValueError("extend needs at least one prefix")
        action_ids = torch.as_tensor(action_ids, dtype=torch.long, device=self.device)
        lengths = torch.tensor([len(p) for p in prefixes], device=self.device)  # (B,)
        T = int(lengths.max())
        cache = self._prompt_cache(prompt, B)
        attention_mask = torch.ones(B, P + T, dtype=torch.long, device=self.device)
        hidden = prompt.hidden.expand(B, -1).clone()  # (B, H) rows with an empty prefix
        if T > 0:
            ids = self._right_padded(prefixes, T)
            attention_mask[:, P:] = torch.arange(T, device=self.device)[None] < lengths[:, None]
            positions = (P + torch.arange(T, device=self.device)).expand(B, -1)
            out = self._forward(ids, cache, attention_mask, positions)  # (B, T, H)
            self.stats.tokens += int(lengths.sum())
            last = (lengths - 1).clamp(min=0)
            hidden = torch.where((lengths > 0)[:, None], out[torch.arange(B), last], hidden)
        return DecodeBatch(
            cache=cache,
            attention_mask=attention_mask,
            next_position=P + lengths,
            action_ids=action_ids,
            logits=self._action_logits(hidden, action_ids),
            hidden=hidden,
            rows=torch.arange(B, device=self.device),
        )

    @torch.inference_mode()
    def path_states(
        self, prompt: PromptCache, paths: Sequence[Sequence[int]], action_ids: Sequence[int] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and action logits of every state along B paths, in one forward.

        State s_0 is the prompt; s_t follows the path's first t tokens. Returns hidden (B, T+1, H)
        and logits over the actions (B, T+1, A), T the longest path; rows past a path's end are
        padding. The flow head's trainer reads these (the LM stays frozen).
        """
        if len(paths) == 0:
            raise ValueError("path_states needs at least one path")
        action_ids = torch.as_tensor(action_ids, dtype=torch.long, device=self.device)
        B, T = len(paths), max(len(p) for p in paths)
        hidden = prompt.hidden.expand(B, 1, -1)
        if T > 0:
            ids = self._right_padded(paths, T)
            positions = (prompt.length + torch.arange(T, device=self.device)).expand(B, -1)
            out = self._forward(ids, self._prompt_cache(prompt, B), None, positions)  # real positions are exact
            self.stats.tokens += sum(len(p) for p in paths)
            hidden = torch.cat([hidden, out], dim=1)
        return hidden, self._action_logits(hidden, action_ids)

    @torch.inference_mode()
    def layer_inputs(
        self, prompt: PromptCache, paths: Sequence[Sequence[int]], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What decoder layer `layer` reads at each prompt position, (P, H), and at each position of B paths,
        (B, T, H) right-padded (rows past a path's end are padding); the paths reuse the prompt's cache.

        A LoRA adapter on the layers from `layer` up leaves these unchanged, so its trainer computes them once
        (`sadt.lora_head.adapted_states_from_layer_inputs` runs only the adapted layers on them)."""
        if len(paths) == 0 or max(len(p) for p in paths) == 0:
            raise ValueError("layer_inputs needs at least one non-empty path")
        whole_prompt = self.decoder(input_ids=prompt.ids[None], use_cache=False, output_hidden_states=True)
        B, T = len(paths), max(len(p) for p in paths)
        positions = (prompt.length + torch.arange(T, device=self.device)).expand(B, -1)
        along_paths = self.decoder(input_ids=self._right_padded(paths, T), position_ids=positions, use_cache=True,
                                   past_key_values=self._prompt_cache(prompt, B), output_hidden_states=True)
        self.stats.forward_calls += 2
        self.stats.tokens += prompt.length + sum(len(p) for p in paths)
        return whole_prompt.hidden_states[layer][0], along_paths.hidden_states[layer]

    def _prompt_cache(self, prompt: PromptCache, batch: int) -> DynamicCache:
        """A cache holding the prompt's KV for `batch` rows (shared until the first forward copies it per row)."""
        cache = DynamicCache()
        cache.layers = [self.cache_layer() for _ in prompt.kv]
        for layer, (keys, values) in zip(cache.layers, prompt.kv):
            layer.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))  # a view: no copy yet
        return cache

    def _right_padded(self, sequences: Sequence[Sequence[int]], length: int) -> torch.Tensor:
        ids = torch.zeros(len(sequences), length, dtype=torch.long, device=self.device)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        return ids

    @torch.inference_mode()
    def step(self, batch: DecodeBatch, next_ids: torch.Tensor) -> DecodeBatch:
        """Append one token (vocabulary id, (B,)) to every row with one forward."""
        mask = torch.cat([batch.attention_mask, torch.ones_like(batch.attention_mask[:, :1])], dim=1)
        out = self._forward(next_ids[:, None], batch.cache, mask, batch.next_position[:, None])
        self.stats.tokens += batch.size
        hidden = out[:, -1]
        return DecodeBatch(
            cache=batch.cache,
            attention_mask=mask,
            next_position=batch.next_position + 1,
            action_ids=batch.action_ids,
            logits=self._action_logits(hidden, batch.action_ids),
            hidden=hidden,
            rows=batch.rows,
        )

    def select(self, batch: DecodeBatch, keep: torch.Tensor) -> DecodeBatch:
        """Keep only the rows `keep` (indices into the batch), e.g. to drop finished rollouts."""
        batch.cache.batch_select_indices(keep)
        return DecodeBatch(
            cache=batch.cache,
            attention_mask=batch.attention_mask[keep],
            next_position=batch.next_position[keep],
            action_ids=batch.action_ids,
            logits=batch.logits[keep],
            hidden=batch.hidden[keep],
            rows=batch.rows[keep],
        )
