"""The LM's features of a batch of trajectories: hidden states h(s_t) and the grammar-restricted prior log p(·|s_t).

The frozen LM computes them once per trajectory (one forward per prompt group, the prompt's KV cached across
steps); they are kept in memory up to a budget and, with a store, on disk across fits. With a LoRA adapter the
prior still comes from the frozen model (adapter disabled) and the head reads the adapted hidden states: what the
first adapted layer reads is computed once per trajectory (the layers below are frozen) and kept in the same memory
budget, and each step runs only the adapted layers on it, with gradients.

A text task under `top_k` (p cut to its k most likely tokens a step, out of tens of thousands) has its features
kept on each step's support only: log p_k over the k tokens and their ids (`Features.support`), so a trajectory
caches k numbers a step rather than the vocabulary's, and the head scores k actions rather than all of them
(P_F ∝ p_k exp(λ Q_φ) is zero off the support, so the losses are the same).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from sadt.grammar import DigitGrammar, TextGrammar
from sadt.lora_head import adapted_states_from_layer_inputs, first_adapted_layer, frozen
from sadt.policy import masked_log_softmax
from trainers.feature_store import FeatureStore
from trainers.options import FeatureConfig


class Features(NamedTuple):
    hidden: torch.Tensor  # (B, T, H) h(s_0..s_{T-1})
    prompt_hidden: torch.Tensor  # (B, H) h(s_0)
    log_prior: torch.Tensor  # (B, T, A) log p(·|s_t), or (B, T, k) over `support`
    support: torch.Tensor | None = None  # (B, T, k) the action of each of log_prior's columns; None: all actions


def support_positions(support: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) each step's action as a column of `support` (B, T, k); 0 on padded steps. An action off its step's
    support (a buffer drawn under another top_k) is a ValueError."""
    hits = support == actions.clamp(min=0)[..., None]
    if not bool(hits.any(-1)[mask].all()):
        raise ValueError("a trajectory's token is not among its step's top-k tokens under p: the buffer was drawn "
                         "under another `top_k` (or another LM) than the one its card records")
    return hits.to(torch.int8).argmax(-1)


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
        self.lm_fingerprint = lm_fingerprint
        self.store = None if config.store is None else FeatureStore(config.store, lm_fingerprint)
        self.prompt_cache: OrderedDict[tuple, object] = OrderedDict()
        self.memory: dict[tuple, tuple[torch.Tensor, ...]] = {}  # (prompt, actions) -> (h, logits[, token ids])
        self.layer_memory: dict[tuple, torch.Tensor] = {}  # LoRA: prompt, (prompt, actions) -> adapted layers input
        self.memory_bytes = 0
        self.grammar: DigitGrammar | TextGrammar | None = None
        self.top_k: int | None = None

    def attach(self, grammar: DigitGrammar | TextGrammar, top_k: int | None) -> None:
        """The grammar and the prior's top-k truncation the buffer's draws were made under (the target's p)."""
        self.grammar, self.top_k = grammar, top_k
        if self.compact and self.store is not None:  # top-k features in a store of their own, one per k
            self.store = FeatureStore(self.config.store, f"{self.lm_fingerprint}.top{top_k}")

    @property
    def compact(self) -> bool:
        """Whether features are kept on each step's top-k support (a text grammar, every token allowed)."""
        return (isinstance(self.grammar, TextGrammar) and self.top_k is not None
                and self.top_k < len(self.action_token_ids))

    def __call__(self, batch: dict) -> Features:
        """Hidden states (B, T, H) of s_0..s_{T-1}, prompt states (B, H), log p(·|s_t) (B, T, A) (or, `compact`,
        (B, T, k) over each step's top-k support)."""
        actions, mask = batch["actions"], batch["mask"]
        keys = [(prompt, tuple(actions[r][mask[r]].tolist())) for r, prompt in enumerate(batch["prompts"])]
        device = actions.device  # the head's: the frozen features are assembled (and cached) on the CPU
        hidden, logits = self._frozen(keys, actions.shape[1])
        support = None
        if self.compact:  # logits are (values, token ids) of the top k: a text grammar allows every token
            logits, support = logits
            log_prior, support = torch.log_softmax(logits, dim=-1).to(device), support.to(device)
        else:
            log_prior = masked_log_softmax(logits, self._allowed(actions.cpu(), mask.cpu()), self.top_k).to(device)
        if self.peft is not None:
            hidden = self._adapted(keys, actions.shape[1]).to(device)
            return Features(hidden, hidden[:, 0], log_prior, support)
        hidden = hidden.to(device)
        return Features(hidden.clone(), hidden[:, 0].clone(), log_prior, support)  # clones: leave inference mode

    def _frozen(self, keys: list[tuple], T: int):
        """The frozen LM's hidden states (B, T, H) and action logits (B, T, A), from the caches where kept; when
        `compact`, the logits are (values, token ids), each (B, T, k), of each step's top k."""
        width = self.top_k if self.compact else len(self.action_token_ids)
        hidden = torch.zeros(len(keys), T, self.lm.hidden_size)
        logits = torch.zeros(len(keys), T, width)
        support = torch.zeros(len(keys), T, width, dtype=torch.long) if self.compact else None
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            stored = self._stored(key)
            if stored is not None:
                n = len(stored[0])
                hidden[row, :n], logits[row, :n] = stored[0], stored[1]
                if self.compact:
                    support[row, :n] = stored[2]
            else:
                groups.setdefault(key[0], []).append(row)
        for prompt, rows in groups.items():
            paths = [[self.action_token_ids[a] for a in keys[r][1]] for r in rows]
            with frozen(self.peft):
                h, lg = self.lm.path_states(self._prompt(prompt), paths, self.action_token_ids)  # (n, T'+1, ·)
            h, lg = h.float().cpu(), lg.float().cpu()
            top = lg.topk(width, dim=-1) if self.compact else None
            for i, row in enumerate(rows):
                n = len(keys[row][1])  # states s_0..s_{n-1} of this trajectory
                hidden[row, :n] = h[i, :n]
                if self.compact:
                    logits[row, :n], support[row, :n] = top.values[i, :n], top.indices[i, :n]
                    features = (hidden[row, :n].clone(), logits[row, :n].clone(), support[row, :n].clone())
                else:
                    logits[row, :n] = lg[i, :n]
                    features = (hidden[row, :n].clone(), logits[row, :n].clone())
                self._remember(keys[row], *features)
                if self.store is not None:
                    self.store.put(keys[row], *features)
        return hidden, ((logits, support) if self.compact else logits)

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
        """The LoRA-adapted hidden states of s_0..s_{T-1}, (B, T, H), with gradients to the adapter: only the
        adapted layers run, on what the first of them reads (`_layer_inputs`)."""
        per_row: list[torch.Tensor | None] = [None] * len(keys)
        groups: dict[tuple, list[int]] = {}
        for row, (prompt, _) in enumerate(keys):
            groups.setdefault(prompt, []).append(row)
        for prompt, rows in groups.items():
            prompt_inputs, path_inputs = self._layer_inputs(prompt, [keys[r] for r in rows])
            device = self.lm.device
            h = adapted_states_from_layer_inputs(
                self.peft, prompt_inputs.to(device), pad_sequence(path_inputs, batch_first=True).to(device),
                [len(keys[r][1]) for r in rows]).float()  # (n, T'+1, H)
            for i, row in enumerate(rows):
                per_row[row] = h[i, :T]
        return pad_sequence(per_row, batch_first=True)  # the longest trajectory has T states

    def _layer_inputs(self, prompt: tuple, keys: list[tuple]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What the first adapted layer reads at the prompt's positions, (P, H), and along each trajectory,
        (T_i, H): the layers below it are frozen, so each is computed once and kept within the memory budget."""
        found = {k: self.layer_memory[k] for k in (prompt, *keys) if k in self.layer_memory}
        missing = [key for key in keys if key not in found]
        if missing or prompt not in found:
            todo = missing or keys[:1]
            paths = [[self.action_token_ids[a] for a in key[1]] for key in todo]
            with frozen(self.peft):
                prompt_inputs, path_inputs = self.lm.layer_inputs(self._prompt(prompt), paths,
                                                                  first_adapted_layer(self.peft))
            computed = {prompt: prompt_inputs, **{key: path_inputs[i, :len(key[1])] for i, key in enumerate(todo)}}
            for k, x in computed.items():
                found[k] = x.cpu().clone()  # in the model's dtype; the clone leaves inference mode
                if self.memory_bytes + found[k].nbytes <= self.config.cache_mb * 2**20:
                    self.layer_memory[k] = found[k]
                    self.memory_bytes += found[k].nbytes
        return found[prompt], [found[key] for key in keys]

    def _prompt(self, tokens: tuple):
        if tokens not in self.prompt_cache:
            self.prompt_cache[tokens] = self.lm.prefill(list(tokens))
            if len(self.prompt_cache) > self.config.prompt_cache_size:
                self.prompt_cache.popitem(last=False)
        return self.prompt_cache[tokens]

    def _stored(self, key: tuple) -> tuple[torch.Tensor, ...] | None:
        """A trajectory's (hidden, logits[, top-k token ids]) from memory, else from the store (then kept in
        memory)."""
        if key in self.memory:
            return self.memory[key]
        stored = None if self.store is None else self.store.get(key)
        if stored is not None:
            self._remember(key, *stored)
        return stored

    def _remember(self, key: tuple, *features: torch.Tensor) -> None:
        size = sum(x.nbytes for x in features)
        if self.memory_bytes + size <= self.config.cache_mb * 2**20:
            self.memory[key] = features
            self.memory_bytes += size
