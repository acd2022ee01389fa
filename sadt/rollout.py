"""Batched rollouts under the digit grammar: the prior p(a|s) renormalised over A(s), sampled.

Each step is `sadt.policy.policy_step`: the LM's softmax restricted to the allowed set (and to
its top k), optionally tilted by a value head into P_F. With `top_k` the target distribution is
defined on the truncated prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sadt.lm.backend import LMBackend
from sadt.policy import policy_step


@dataclass
class Rollouts:
    actions: torch.Tensor  # (B, T) action indices after the prefix, -1 padded
    log_prior: torch.Tensor  # (B, T) log p(a_t|s_t) of each sampled action, 0 padded
    log_proposal: torch.Tensor  # (B, T) log-probability of each sampled action under the policy that drew it
    lengths: torch.Tensor  # (B,) actions sampled per row
    step_log_probs: torch.Tensor | None = None  # (B, T, A) log p(.|s_t) over all actions, when asked for
    step_q: torch.Tensor | None = None  # (B, T, A) Q_φ(s_t, ·) from `value_head`, when one is given
    step_actions: torch.Tensor | None = None  # (B, T, k) under top_k < A: the actions the last axis of
    # step_log_probs and step_q is over (the prior's top k), so a vocabulary-wide step costs O(k)

    def full_sequences(self, prefixes: Sequence[Sequence[int]]) -> list[list[int]]:
        """Prefix + sampled actions of each row, as Python lists."""
        return [list(p) + self.actions[i, : self.lengths[i]].tolist() for i, p in enumerate(prefixes)]


@torch.inference_mode()
def rollout(
    lm: LMBackend,
    prompt,
    action_token_ids: Sequence[int],
    grammar,
    prefixes: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    return_step_log_probs: bool = False,
    value_head=None,
    guide_lam: float = 0.0,
) -> Rollouts:
    """Complete every prefix (action indices after the prompt) to a terminal, all rows at once.

    Args:
        action_token_ids: (A,) vocabulary id of each action index (e.g. `Codec.action_token_ids`).
        grammar: gives the allowed actions of each state (`DigitGrammar` for forecasts).
        prefixes: B ragged lists of action indices already taken after the prompt.
        return_step_log_probs: also keep the prior vector of every step (the tree stores it): over all
            actions, or under `top_k` < A over the top k only, with their actions (`step_actions`).
        value_head: an optional `sadt.value.Value` (`task.value(head, λ)`), called as
            `value_head(hidden, sequences)` on the hidden state the step's forward already computed (a flow
            head costs no LM call); `sequences()` gives each live row's actions, for values that read them.
        guide_lam: with a value head, sample from `P_F ∝ p exp(guide_lam · Q_φ)` instead of p (the
            recorded `log_prior` stays the prior's).

    Rows are dropped from the batch as they finish, so a step costs only the live rows.
    The recorded `log_prior` is the temperature-1 prior, whatever `temperature` samples with.
    """
    if temperature <= 0:
        raise ValueError(f"rollout `temperature` must be > 0, got {temperature}")  # before any LM work
    device = lm.device
    token_prefixes = [[action_token_ids[a] for a in p] for p in prefixes]
    action_token_ids = torch.tensor(list(action_token_ids), device=device)
    batch = lm.extend(prompt, token_prefixes, action_token_ids)
    state = grammar.replay([list(p) for p in prefixes], device)
    B, T = len(prefixes), grammar.max_tokens
    actions = torch.full((B, T), -1, dtype=torch.long, device=device)
    log_prior = torch.zeros(B, T, dtype=torch.float64, device=device)
    log_proposal = torch.zeros(B, T, dtype=torch.float64, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    step_log_probs = step_q = step_actions = None
    A = action_token_ids.numel()
    width = top_k if top_k is not None and top_k < A else A  # what each step keeps of the prior
    if value_head is not None:
        step_q = torch.full((B, T, width), float("nan"), dtype=torch.float64, device=device)
    if return_step_log_probs:
        step_log_probs = torch.full((B, T, width), float("-inf"), dtype=torch.float64, device=device)
    if width < A and (return_step_log_probs or value_head is not None):
        step_actions = torch.full((B, T, width), -1, dtype=torch.long, device=device)

    def live_sequences() -> list[list[int]]:  # each live row's actions after the prompt, for heads that read them
        return [list(prefixes[r]) + actions[r, : lengths[r]].tolist() for r in batch.rows.tolist()]

    live = (~state.done).nonzero().squeeze(1)
    batch, state = lm.select(batch, live), state.index(live)
    while batch.size > 0:
        q = value_head(batch.hidden, live_sequences).double() if value_head is not None else None
        step = policy_step(batch.logits, grammar.mask(state), q, top_k=top_k, guide_lam=guide_lam,
                           temperature=temperature, generator=generator)
        chosen, rows = step.action, batch.rows
        actions[rows, lengths[rows]] = chosen
        log_prior[rows, lengths[rows]] = step.chosen(step.log_prior)
        log_proposal[rows, lengths[rows]] = step.chosen(step.log_proposal)
        kept = step.log_prior.topk(width, dim=-1).indices if step_actions is not None else None
        if kept is not None:
            step_actions[rows, lengths[rows]] = kept
        if step_log_probs is not None:
            step_log_probs[rows, lengths[rows]] = step.log_prior if kept is None else step.log_prior.gather(-1, kept)
        if step_q is not None:
            step_q[rows, lengths[rows]] = q if kept is None else q.gather(-1, kept)
        lengths[rows] += 1
        state = grammar.advance(state, chosen)
        live = (~state.done).nonzero().squeeze(1)
        if live.numel() == 0:
            break
        if live.numel() < batch.size:
            batch, state, chosen = lm.select(batch, live), state.index(live), chosen[live]
        batch = lm.step(batch, action_token_ids[chosen])
    longest = int(lengths.max()) if B else 0
    if step_log_probs is not None:
        step_log_probs = step_log_probs[:, :longest]
    if step_q is not None:
        step_q = step_q[:, :longest]
    if step_actions is not None:
        step_actions = step_actions[:, :longest]
    return Rollouts(actions[:, :longest], log_prior[:, :longest], log_proposal[:, :longest], lengths, step_log_probs,
                    step_q, step_actions)
