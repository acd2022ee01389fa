"""The LM's features of a batch of trajectories: hidden states h(s_t) and the grammar-restricted prior log p(·|s_t).

The frozen LM computes them once per trajectory (one forward per prompt group, the prompt's KV cached across
steps); they are kept in memory up to a budget and, with a store, on disk across fits. With a LoRA adapter the
prior still comes from the frozen model (adapter disabled) and the head reads the adapted hidden states, which
a differentiable forward of prompt + path computes every step (not cached).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from sadt.grammar import DigitGrammar, TextGrammar
from sadt.lora_head import adapted_path_states, frozen
from sadt.policy import masked_log_softmax
from trainers.feature_store import FeatureStore
from trainers.options import FeatureConfig


class LMFeatures:
    """Features of trajectories (prompt tokens, action indices) under one LM, grammar and prior truncation.

    Args:
        lm: the frozen `TorchLM`.
        action_token_ids: the token id of each action.
        config: the caches' sizes and the on-disk store.
        lm_fingerprint: the LM the store's features belong to.
        peft: the LoRA-wrapped model whose adapted states the head reads, or None (the frozen states).
    """

    def __init__(self, lm, action_token_ids: list[int], config: FeatureConfig, lm_fingerprint: str,
                 peft=None) -> None:
        self.lm, self.action_token_ids, self.config, self.peft = lm, action_token_ids, config, peft
        self.store = None if config.store is None else FeatureStore(config.store, lm_fingerprint)
        self.prompt_cache: OrderedDict[tuple, object] = OrderedDict()
        self.memory: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (prompt, actions) -> (h, logits)
        self.memory_bytes = 0
        self.grammar: DigitGrammar | TextGrammar | None = None
        self.top_k: int | None = None

    def attach(self, grammar: DigitGrammar | TextGrammar, top_k: int | None) -> None:
        """The grammar and the prior's top-k truncation the buffer's draws were made under (the target's p)."""
        self.grammar, self.top_k = grammar, top_k

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) of s_0..s_{T-1}, prompt states (B, H), log p(·|s_t) (B, T, A)."""
        actions, mask = batch["actions"], batch["mask"]
        keys = [(prompt, tuple(actions[r][mask[r]].tolist())) for r, prompt in enumerate(batch["prompts"])]
        device = actions.device  # the head's: the frozen features are assembled (and cached) on the CPU
        hidden, logits = self._frozen(keys, actions.shape[1])
        log_prior = masked_log_softmax(logits, self._allowed(actions.cpu(), mask.cpu()), self.top_k).to(device)
        if self.peft is not None:
            hidden = self._adapted(keys, actions.shape[1]).to(device)
            return hidden, hidden[:, 0], log_prior
        hidden = hidden.to(device)
        return hidden.clone(), hidden[:, 0].clone(), log_prior  # clones: leave inference mode

    def _frozen(self, keys: list[tuple], T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen LM's hidden states (B, T, H) and action logits (B, T, A), from the caches where kept."""
        hidden = torch.zeros(len(keys), T, self.lm.hidden_size)
        logits = torch.zeros(len(keys), T, len(self.action_token_ids))
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            stored = self._stored(key)
            if stored is not None:
                hidden[row, : len(stored[0])], logits[row, : len(stored[0])] = stored
            else:
                groups.setdefault(key[0], []).append(row)
        for prompt, rows in groups.items():
            paths = [[self.action_token_ids[a] for a in keys[r][1]] for r in rows]
            with frozen(self.peft):
                h, lg = self.lm.path_states(self._prompt(prompt), paths, self.action_token_ids)  # (n, T'+1, ·)
            h, lg = h.float().cpu(), lg.float().cpu()
            for i, row in enumerate(rows):
                n = len(keys[row][1])  # states s_0..s_{n-1} of this trajectory
                hidden[row, :n], logits[row, :n] = h[i, :n], lg[i, :n]
                self._remember(keys[row], hidden[row, :n].clone(), logits[row, :n].clone())
                if self.store is not None:
                    self.store.put(keys[row], hidden[row, :n], logits[row, :n])
        return hidden, logits

    def _allowed(self, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, A) the grammar's allowed actions at each step; every action on padded steps (the losses
        ignore them, any finite prior does)."""
        B, T = actions.shape
        allowed = torch.zeros(B, T, len(self.action_token_ids), dtype=torch.bool)
        state = self.grammar.initial(B)
        for t in range(T):
            allowed[:, t] = self.grammar.mask(state)
            state = self.grammar.advance(state, actions[:, t].clamp(min=0))
        return allowed | ~mask[..., None]

    def _adapted(self, keys: list[tuple], T: int) -> torch.Tensor:
        """The LoRA-adapted hidden states of s_0..s_{T-1}, (B, T, H), with gradients to the adapter."""
        per_row: list[torch.Tensor | None] = [None] * len(keys)
        groups: dict[tuple, list[int]] = {}
        for row, (prompt, _) in enumerate(keys):
            groups.setdefault(prompt, []).append(row)
        for prompt, rows in groups.items():
            paths = [[self.action_token_ids[a] for a in keys[r][1]] for r in rows]
            h = adapted_path_states(self.peft, list(prompt), paths).float()  # (n, T'+1, H)
            for i, row in enumerate(rows):
                per_row[row] = h[i, :T]
        return torch.nn.utils.rnn.pad_sequence(per_row, batch_first=True)  # the longest trajectory has T states

    def _prompt(self, tokens: tuple):
        if tokens not in self.prompt_cache:
            self.prompt_cache[tokens] = self.lm.prefill(list(tokens))
            if len(self.prompt_cache) > self.config.prompt_cache_size:
                self.prompt_cache.popitem(last=False)
        return self.prompt_cache[tokens]

    def _stored(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A trajectory's (hidden, logits) from memory, else from the store (then kept in memory)."""
        if key in self.memory:
            return self.memory[key]
        stored = None if self.store is None else self.store.get(key)
        if stored is not None:
            self._remember(key, *stored)
        return stored

    def _remember(self, key: tuple, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        size = hidden.nbytes + logits.nbytes
        if self.memory_bytes + size <= self.config.cache_mb * 2**20:
            self.memory[key] = (hidden, logits)
            self.memory_bytes += size
