"""The balance losses are zero at the exact optimum of the enumerable toy and positive elsewhere."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from toy_problem import Toy

from sadt.losses import (
    detailed_balance,
    soft_value,
    subtrajectory_balance,
    trajectory_balance,
    value_regression,
    vargrad,
    weighted_cross_entropy,
)

LAM = 2.0


@pytest.fixture(scope="module")
def optimum():
    toy = Toy(length=4)
    _, root_value = toy.target(LAM)
    S = len(toy.sequences)
    return {
        "q": torch.tensor(toy.exact_q(LAM)),  # (S, L, A)
        "log_prior": torch.tensor(toy.step_log_priors(), dtype=torch.float64),
        "actions": torch.tensor(toy.sequences),
        "mask": torch.ones(S, toy.length, dtype=torch.bool),
        "log_z": torch.full((S,), LAM * root_value, dtype=torch.float64),
        "reward": torch.tensor(toy.table, dtype=torch.float64),
    }


BALANCES = [trajectory_balance, detailed_balance, subtrajectory_balance]


@pytest.mark.parametrize("loss", BALANCES, ids=lambda f: f.__name__)
def test_balance_losses_vanish_at_the_optimum(optimum, loss):
    assert loss(lam=LAM, **optimum).max().item() < 1e-20


@pytest.mark.parametrize("loss", BALANCES, ids=lambda f: f.__name__)
def test_balance_losses_are_positive_away_from_it(optimum, loss):
    wrong_z = {**optimum, "log_z": optimum["log_z"] + 0.3}
    assert (loss(lam=LAM, **wrong_z) > 1e-4).all()  # every trajectory passes through the root
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(optimum["q"].shape, generator=generator, dtype=torch.float64)
    noisy = {**optimum, "q": optimum["q"] + 0.1 * noise}
    assert loss(lam=LAM, **noisy).mean() > 1e-4


def test_optimal_head_reproduces_the_soft_bellman_identity(optimum):
    # V_φ(s_0) from the exact Q equals log Z / λ.
    v0 = soft_value(optimum["q"][:, 0], optimum["log_prior"][:, 0], LAM)
    torch.testing.assert_close(LAM * v0, optimum["log_z"])


def test_padding_gives_the_same_loss_and_finite_gradients(optimum):
    q = optimum["q"][:2].clone().requires_grad_(True)
    padded = {
        "q": torch.cat([q, torch.zeros(2, 3, 3, dtype=q.dtype)], dim=1),
        "log_prior": torch.cat([optimum["log_prior"][:2], torch.full((2, 3, 3), -torch.inf, dtype=q.dtype)], dim=1),
        "actions": torch.cat([optimum["actions"][:2], torch.full((2, 3), -1)], dim=1),
        "mask": torch.cat([optimum["mask"][:2], torch.zeros(2, 3, dtype=torch.bool)], dim=1),
        "log_z": optimum["log_z"][:2] + 0.5, "reward": optimum["reward"][:2],
    }
    plain = {k: v[:2] for k, v in optimum.items()} | {"q": q, "log_z": optimum["log_z"][:2] + 0.5}
    for loss in BALANCES:
        torch.testing.assert_close(loss(lam=LAM, **padded), loss(lam=LAM, **plain))
    trajectory_balance(lam=LAM, **padded).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_vargrad_is_zero_at_the_optimum_and_positive_otherwise(optimum):
    args = {k: optimum[k] for k in ("q", "log_prior", "actions", "mask", "reward")}
    prompts = torch.zeros(len(optimum["reward"]), dtype=torch.long)
    assert vargrad(**args, prompt_index=prompts, lam=LAM).item() < 1e-20
    noisy = {**args, "q": args["q"] + 0.1 * torch.randn_like(args["q"])}
    assert vargrad(**noisy, prompt_index=prompts, lam=LAM).item() > 1e-4


def test_value_regression_targets_the_next_states_tree_value(optimum):
    q, actions = optimum["q"], optimum["actions"]
    targets = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1).clone()  # V(s_{t+1}) = Q(s_t, a_t)
    targets[:, 1] = np.nan  # unknown values are skipped
    assert value_regression(q, actions, optimum["mask"], targets).item() == 0.0
    assert value_regression(q + 0.5, actions, optimum["mask"], targets).item() == pytest.approx(0.25)


def test_weighted_cross_entropy_is_minus_kl_to_p_with_zero_gradient_at_the_optimum(optimum):
    # Exact expectation under π*: every sequence once, with ω = S π*(x) (mean 1, as n exp(λr)/Σ exp(λr)).
    toy = Toy(length=4)
    target, root_value = toy.target(LAM)
    weights = torch.tensor(len(target) * target)
    q = optimum["q"].clone().requires_grad_(True)
    args = (optimum["log_prior"], optimum["actions"], optimum["mask"], weights, LAM)
    loss = weighted_cross_entropy(q, *args).mean()
    kl_target_prior = LAM * float(target @ toy.table) - LAM * root_value  # E_π*[log π*/p] = λ E_π*[r] − log Z
    assert loss.item() == pytest.approx(-kl_target_prior, abs=1e-10)
    # Rows hold their own copy of each shared state's Q: P_F = π* is stationary once a state's rows are summed.
    loss.backward()
    per_state: dict[tuple, torch.Tensor] = {}
    for row, actions in enumerate(optimum["actions"].tolist()):
        for t in range(toy.length):
            key = tuple(actions[:t])
            per_state[key] = per_state.get(key, 0) + q.grad[row, t]
    assert max(g.abs().max().item() for g in per_state.values()) < 1e-12
    # A perturbation that is a function of (depth, action) keeps one Q per state: a proper P_F ≠ π*.
    noisy = optimum["q"] + 0.1 * torch.randn(1, *optimum["q"].shape[1:], dtype=torch.float64)
    assert weighted_cross_entropy(noisy, *args).mean().item() > -kl_target_prior + 1e-4  # KL(π*‖P_F) > 0


def test_weighted_cross_entropy_charges_raising_an_untaken_action(optimum):
    # Trajectories that start with action 0: raising Q(s_0, 1) raises V(s_0), and every one of them pays.
    rows = optimum["actions"][:, 0] == 0
    args = [optimum[k][rows] for k in ("log_prior", "actions", "mask")]
    weights = torch.ones(int(rows.sum()), dtype=torch.float64)
    q = optimum["q"][rows].clone()
    base = weighted_cross_entropy(q, *args, weights, LAM)
    q[:, 0, 1] += 1.0
    assert (weighted_cross_entropy(q, *args, weights, LAM) > base + 1e-3).all()


def hand_potentials(q, log_prior, actions, length, log_z, reward, lam):
    """One trajectory in plain float64 loops: F̃_t (log Z at t = 0, λ V_φ(s_t) inside, λ r at the end) and
    the per-step log P_F(a_t|s_t) − log p(a_t|s_t), straight from DESIGN §2's definitions."""
    log_f, step = [log_z], []
    for t in range(length):
        scores = [log_prior[t][a] + lam * q[t][a] for a in range(len(q[t]))]
        lam_v = float(logsumexp(scores))  # λ V_φ(s_t) = log Σ_a p(a|s_t) e^{λ Q(s_t, a)}
        log_pf = scores[actions[t]] - lam_v
        step.append(log_pf - log_prior[t][actions[t]])
        if t > 0:
            log_f.append(lam_v)
    log_f.append(lam * reward)
    return log_f, step


@pytest.fixture(scope="module")
def off_optimum(optimum):
    """A head away from the optimum (seeded noise on Q and log Z), with some trajectories cut short."""
    generator = torch.Generator().manual_seed(0)
    q = optimum["q"] + 0.4 * torch.randn(optimum["q"].shape, generator=generator, dtype=torch.float64)
    mask = optimum["mask"].clone()
    mask[::3, 3:] = False  # every third trajectory ends after 3 steps (its reward then scores that prefix)
    log_z = optimum["log_z"] + 0.2 * torch.randn(optimum["log_z"].shape, generator=generator, dtype=torch.float64)
    return {**optimum, "q": q, "mask": mask, "log_z": log_z}


def hand_residuals(batch, row):
    length = int(batch["mask"][row].sum())
    log_f, step = hand_potentials(batch["q"][row].tolist(), batch["log_prior"][row].tolist(),
                                  batch["actions"][row].tolist(), length, float(batch["log_z"][row]),
                                  float(batch["reward"][row]), LAM)
    return log_f, step, length


@pytest.mark.parametrize("row", [0, 1, 5, 77])
def test_balance_losses_match_hand_computed_residuals_away_from_the_optimum(off_optimum, row):
    log_f, step, length = hand_residuals(off_optimum, row)
    tb = (log_f[0] + sum(step) - log_f[length]) ** 2
    db = np.mean([(log_f[t] + step[t] - log_f[t + 1]) ** 2 for t in range(length)])
    w, num, den = 0.9, 0.0, 0.0
    for i in range(length + 1):
        for j in range(i + 1, length + 1):
            num += w ** (j - i) * (log_f[i] + sum(step[i:j]) - log_f[j]) ** 2
            den += w ** (j - i)
    assert trajectory_balance(lam=LAM, **off_optimum)[row].item() == pytest.approx(tb, rel=1e-10)
    assert detailed_balance(lam=LAM, **off_optimum)[row].item() == pytest.approx(db, rel=1e-10)
    assert subtrajectory_balance(lam=LAM, weight=w, **off_optimum)[row].item() == pytest.approx(num / den, rel=1e-10)
    assert tb > 1e-3 and db > 1e-3  # away from the optimum, so a wrong weighting cannot hide at zero


def test_vargrad_and_weighted_cross_entropy_match_hand_computed_values(off_optimum):
    rows = [0, 1, 2, 4]
    implied = []
    for row in rows:
        log_f, step, length = hand_residuals(off_optimum, row)
        implied.append(log_f[length] - sum(step))  # λ r − Σ_t log P_F/p: the trajectory's implied log Z
    sub = {k: v[rows] for k, v in off_optimum.items() if k != "log_z"}
    prompt_index = torch.tensor([0, 0, 1, 1])
    expected = np.mean([(implied[i] - np.mean(implied[g : g + 2])) ** 2 for g in (0, 2) for i in (g, g + 1)])
    got = vargrad(sub["q"], sub["log_prior"], sub["actions"], sub["mask"], sub["reward"], prompt_index, LAM)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    weights = torch.tensor([0.5, 1.5, 2.0, 0.0], dtype=torch.float64)
    ce = weighted_cross_entropy(sub["q"], sub["log_prior"], sub["actions"], sub["mask"], weights, LAM)
    for i, row in enumerate(rows):
        _, step, _ = hand_residuals(off_optimum, row)
        assert ce[i].item() == pytest.approx(-weights[i].item() * sum(step), rel=1e-10, abs=1e-12)
