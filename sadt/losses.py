"""GFlowNet objectives for a value head Q_φ over the prior p (DESIGN §2), as pure tensor functions.

With `P_F^φ(a|s) ∝ p(a|s) exp(λ Q_φ(s,a))` and `V_φ(s) = (1/λ) log Σ_a p(a|s) exp(λ Q_φ(s,a))`,
`log P_F^φ(a|s) - log p(a|s) = λ (Q_φ(s,a) - V_φ(s))`. Along a trajectory s_0 -> ... -> s_T = x
define the potentials

    U_0 = log Z_φ(c),   U_t = λ V_φ(s_t) (0 < t < T),   U_T = λ r(x),
    G_t = Σ_{k<t} [log P_F^φ(a_k|s_k) - log p(a_k|s_k)].

The flow is `log F(s_t) = log p(s_t) + U_t`, and every balance residual is `U_i - U_j + G_j - G_i`:
trajectory balance (Malkin et al. 2022) is the pair (0, T), detailed balance (Bengio et al. 2023)
the pairs (t, t+1), sub-trajectory balance (Madan et al. 2023) all pairs i < j weighted by
`w^(j-i)`. At the optimum (Q_φ = V(s·a), log Z_φ = λ V(s_0)) every residual is zero.
`weighted_cross_entropy` is the forward-KL counterpart on draws from p, importance-weighted.

Shapes: B trajectories, T steps (padded), A actions. `mask` (B, T) marks real steps.
"""

from __future__ import annotations

import torch


def soft_value(q: torch.Tensor, log_prior: torch.Tensor, lam: float) -> torch.Tensor:
    """V_φ(s) = (1/λ) logsumexp_a [log p(a|s) + λ Q(s,a)]: (..., A) -> (...). -inf priors drop out."""
    return torch.logsumexp(log_prior + lam * q, dim=-1) / lam


def log_pf_ratio(q: torch.Tensor, log_prior: torch.Tensor, actions: torch.Tensor, lam: float) -> torch.Tensor:
    """log P_F^φ(a_t|s_t) - log p(a_t|s_t) = λ (Q(s_t,a_t) - V_φ(s_t)): (B, T, A), (B, T) -> (B, T)."""
    chosen = q.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return lam * (chosen - soft_value(q, log_prior, lam))


def _finite_padding(log_prior: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded steps get a uniform prior: an all -inf row would give NaN gradients through logsumexp."""
    return torch.where(mask[..., None], log_prior, 0.0)


def potentials(
    q: torch.Tensor, log_prior: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor,
    log_z: torch.Tensor, reward: torch.Tensor, lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """U (B, T+1) and G (B, T+1) of the module docstring; positions past a trajectory's end hold λ r."""
    B, T = actions.shape
    log_prior = _finite_padding(log_prior, mask)
    lengths = mask.sum(dim=1)  # (B,)
    steps = torch.arange(T + 1, device=q.device)[None]  # (1, T+1)
    ratio = torch.where(mask, log_pf_ratio(q, log_prior, actions, lam), 0.0)  # (B, T)
    G = torch.cat([ratio.new_zeros(B, 1), ratio.cumsum(dim=1)], dim=1)  # (B, T+1)
    values = lam * soft_value(q, log_prior, lam)  # (B, T): λ V_φ(s_t) for t < T
    U = torch.cat([values, values.new_zeros(B, 1)], dim=1)  # (B, T+1)
    U = torch.where(steps == 0, log_z[:, None], U)
    U = torch.where(steps >= lengths[:, None], (lam * reward)[:, None].to(U.dtype), U)
    return U, G


def trajectory_balance(q, log_prior, actions, mask, log_z, reward, lam: float) -> torch.Tensor:
    """Per-trajectory TB loss `(log Z + Σ_t log P_F/p − λ r)²`: (B,)."""
    U, G = potentials(q, log_prior, actions, mask, log_z, reward, lam)
    end = mask.sum(dim=1)
    residual = U[:, 0] - U.gather(1, end[:, None]).squeeze(1) + G.gather(1, end[:, None]).squeeze(1)
    return residual**2


def subtrajectory_balance(
    q, log_prior, actions, mask, log_z, reward, lam: float, weight: float = 0.9
) -> torch.Tensor:
    """SubTB: `Σ_{i<j} w^(j-i) R_ij² / Σ_{i<j} w^(j-i)` over each trajectory's pairs: (B,)."""
    U, G = potentials(q, log_prior, actions, mask, log_z, reward, lam)
    residual = U[:, :, None] - U[:, None, :] + G[:, None, :] - G[:, :, None]  # (B, i, j)
    T1 = U.shape[1]
    i = torch.arange(T1, device=U.device)
    end = mask.sum(dim=1)
    valid = (i[:, None] < i[None, :])[None] & (i[None, None, :] <= end[:, None, None])  # (B, i, j)
    w = torch.where(valid, weight ** (i[None, :] - i[:, None]).clamp(min=0).to(U.dtype)[None], 0.0)
    return (w * residual**2).sum(dim=(1, 2)) / w.sum(dim=(1, 2))


def detailed_balance(q, log_prior, actions, mask, log_z, reward, lam: float) -> torch.Tensor:
    """DB: mean over steps of `(U_t − U_{t+1} + G_{t+1} − G_t)²`: (B,)."""
    U, G = potentials(q, log_prior, actions, mask, log_z, reward, lam)
    residual = U[:, :-1] - U[:, 1:] + G[:, 1:] - G[:, :-1]  # (B, T)
    return torch.where(mask, residual**2, 0.0).sum(dim=1) / mask.sum(dim=1)


def vargrad(q, log_prior, actions, mask, reward, prompt_index: torch.Tensor, lam: float) -> torch.Tensor:
    """VarGrad (Richter et al. 2020): the variance, within each prompt, of `λ r − Σ_t log P_F/p`,
    i.e. of each trajectory's implied log Z. Scalar; zero when every implied log Z agrees."""
    log_prior = _finite_padding(log_prior, mask)
    ratio = torch.where(mask, log_pf_ratio(q, log_prior, actions, lam), 0.0).sum(dim=1)
    implied = lam * reward - ratio  # (B,)
    groups, inverse = torch.unique(prompt_index, return_inverse=True)
    count = implied.new_zeros(len(groups)).index_add_(0, inverse, torch.ones_like(implied))  # (P,)
    mean = implied.new_zeros(len(groups)).index_add_(0, inverse, implied) / count
    return ((implied - mean[inverse]) ** 2).mean()


def weighted_cross_entropy(
    q: torch.Tensor, log_prior: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Per-trajectory `−ω_i log P_F^φ(x_i)/p(x_i) = −ω_i Σ_t λ (Q_φ(s_t,a_t) − V_φ(s_t))`: (B,).

    With x_1..x_n ~ p(x|c) and ω_i = n exp(λ r_i) / Σ_j exp(λ r_j), the mean over the n draws is the
    self-normalised estimate of `−E_π*[log P_F^φ(x)/p(x)] = KL(π*‖P_F^φ) − KL(π*‖p)`: the forward KL
    that importance weights pay for, less a φ-free constant. It is mass-covering, unlike the
    balance losses on search trajectories: every action's Q_φ enters V_φ(s_t), so raising Q_φ where
    π* has no mass costs here. Minimised, with exact weights, at P_F^φ = π* (value −KL(π*‖p)).
    """
    log_prior = _finite_padding(log_prior, mask)
    ratio = torch.where(mask, log_pf_ratio(q, log_prior, actions, lam), 0.0).sum(dim=1)  # (B,)
    return -weights.to(ratio.dtype) * ratio


def value_regression(
    q: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, tree_values: torch.Tensor
) -> torch.Tensor:
    """Mean over steps with a known tree value of `(Q_φ(s_t,a_t) − V̂_tree(s_{t+1}))²`; scalar.

    Q(s, a) is by definition V(s·a), so the tree's soft value of the next state is its target.
    """
    chosen = q.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    known = mask & torch.isfinite(tree_values)
    if not known.any():
        return chosen.sum() * 0.0
    return ((chosen - torch.nan_to_num(tree_values)) ** 2)[known].mean()
