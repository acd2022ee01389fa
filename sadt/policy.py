"""One policy step, the only place where the prior p and the proposal P_F are defined.

Rollouts, SMC, twisted SMC and the `flow` sampler all draw their next action here, so the prior's
truncation and the head's tilt are applied the same way everywhere (DESIGN §2):

    log p(a|s) = logit_a − logsumexp_{b ∈ K(s)} logit_b        for a ∈ K(s), −inf elsewhere,
    log q(a|s) = log p(a|s) / T + g Q_φ(s, a) − log Σ_{b ∈ K(s)} (same)   (the proposal),

with K(s) the allowed actions A(s), cut to the k most likely under p when `top_k` is set. The
truncation is taken of the prior's logits *before* any tilt: the target is p truncated, so the
proposal must put mass on exactly its support (a tilt that reordered the top k would draw actions
of zero target weight and never draw some of positive weight). T is a sampling temperature,
g = guide_lam the tilt's inverse temperature (g = λ gives the head's own P_F).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """log p(a|s) over the allowed actions, cut to the top k, (B, A) -> (B, A); the rest get -inf.

    Every row must allow at least one action.
    """
    masked = logits.masked_fill(~mask, float("-inf"))
    if top_k is not None and top_k < masked.shape[-1]:
        kept = torch.zeros(masked.shape, dtype=torch.bool, device=masked.device)
        kept.scatter_(-1, masked.topk(top_k, dim=-1).indices, True)  # exactly k, even where the k-th logit ties
        masked = masked.masked_fill(~kept, float("-inf"))
    return masked - torch.logsumexp(masked, dim=-1, keepdim=True)


def proposal_log_probs(
    log_prior: torch.Tensor, q: torch.Tensor | None = None, guide_lam: float = 0.0, temperature: float = 1.0
) -> torch.Tensor:
    """log q(·|s) ∝ log p(·|s) / T + g Q_φ(s, ·) on p's support, (..., A); p itself when T = 1 and no tilt."""
    if temperature == 1.0 and (q is None or guide_lam == 0.0):
        return log_prior
    scores = log_prior / temperature
    if q is not None and guide_lam != 0.0:
        scores = scores + torch.where(torch.isfinite(log_prior), guide_lam * q, 0.0)  # no inf·0 off the support
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


@dataclass
class PolicyStep:
    log_prior: torch.Tensor  # (B, A) log p(·|s), truncated and renormalised
    log_proposal: torch.Tensor  # (B, A) log q(·|s) of the policy that drew `action`
    action: torch.Tensor  # (B,) the drawn actions

    def chosen(self, table: torch.Tensor) -> torch.Tensor:
        """table[b, action[b]]: (B, A) -> (B,)."""
        return table.gather(-1, self.action[:, None]).squeeze(-1)


def policy_log_probs(
    logits: torch.Tensor, mask: torch.Tensor, q: torch.Tensor | None = None, *, top_k: int | None = None,
    guide_lam: float = 0.0, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, mask, Q_φ, top_k, g, T) -> (log p, log q), each (B, A), in float64."""
    if temperature <= 0:
        raise ValueError(f"sampling `temperature` must be > 0, got {temperature}")
    log_prior = masked_log_softmax(logits.double(), mask, top_k)
    return log_prior, proposal_log_probs(log_prior, None if q is None else q.double(), guide_lam, temperature)


def draw(log_proposal: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row from q, (B, A) -> (B,)."""
    return torch.multinomial(log_proposal.exp(), 1, generator=generator).squeeze(1)


def policy_step(
    logits: torch.Tensor, mask: torch.Tensor, q: torch.Tensor | None = None, *, top_k: int | None = None,
    guide_lam: float = 0.0, temperature: float = 1.0, generator: torch.Generator | None = None,
) -> PolicyStep:
    """(logits, mask, Q_φ, top_k, g) -> (log p, log q, a ~ q): one step of any of the samplers."""
    log_prior, log_proposal = policy_log_probs(logits, mask, q, top_k=top_k, guide_lam=guide_lam,
                                               temperature=temperature)
    return PolicyStep(log_prior, log_proposal, draw(log_proposal, generator))
