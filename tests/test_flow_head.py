"""The MLP head learns π* on the enumerable toy from trajectories harvested by MaxEnt-TS."""

import numpy as np
import torch
from toy_problem import ACTION_IDS, PROMPT, Toy, total_variation

from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.losses import log_pf_ratio, trajectory_balance

LAM = 2.0


def features(toy: Toy, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (B, L, H) of the states s_0..s_{L-1} and the prior over actions (B, L, A)."""
    prompt = toy.lm.prefill(PROMPT)
    hidden, logits = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
    return hidden[:, :-1].float(), torch.log_softmax(logits[:, :-1], dim=-1).float()


def policy_distribution(head: MLPFlowHead, toy: Toy, hidden, log_prior, actions) -> np.ndarray:
    """P_F^φ(x) over every sequence: Π_t p(a_t|s_t) exp(λ (Q - V_φ))."""
    with torch.no_grad():
        log_p = log_prior.gather(-1, actions[..., None]).squeeze(-1)
        ratio = log_pf_ratio(head.q(hidden), log_prior, actions, LAM)
        return torch.exp((log_p + ratio).sum(dim=1)).double().numpy()


def test_untrained_head_is_the_prior_and_shapes_hold():
    toy = Toy(length=3)
    head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].float(), FlowHeadConfig(hidden=16))
    hidden, log_prior = features(toy, toy.sequences)
    assert head.q(hidden).shape == (27, 3, 3) and head.log_z(hidden[:, 0]).shape == (27,)
    actions = torch.tensor(toy.sequences)
    np.testing.assert_allclose(policy_distribution(head, toy, hidden, log_prior, actions), np.exp(toy.log_p), rtol=1e-5)


def test_training_on_harvested_trajectories_drives_tb_down_and_the_policy_to_the_target():
    toy = Toy()
    torch.manual_seed(0)
    tree = toy.search(LAM, 1000).tree  # 207 of the 243 sequences
    view = tree.trajectories()
    sequences = [a.tolist() for a in view.split("actions")]
    hidden, log_prior = features(toy, sequences)
    actions = torch.tensor(sequences)
    reward = torch.tensor(view.rewards, dtype=torch.float32)
    mask = torch.ones_like(actions, dtype=torch.bool)
    head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].float(), FlowHeadConfig(hidden=64))
    optimiser = torch.optim.Adam([
        {"params": [p for n, p in head.named_parameters() if not n.startswith("log_z")], "lr": 1e-2},
        {"params": head.log_z_mlp.parameters(), "lr": 3e-2},  # log Z gets its own, larger step
    ])
    all_hidden, all_prior = features(toy, toy.sequences)
    all_actions = torch.tensor(toy.sequences)
    target = toy.target(LAM)[0]
    tv_start = total_variation(policy_distribution(head, toy, all_hidden, all_prior, all_actions), target)

    def loss_now():
        return trajectory_balance(head.q(hidden), log_prior, actions, mask, head.log_z(hidden[:, 0]), reward, LAM)

    loss_start = loss_now().mean().item()
    for _ in range(1500):
        optimiser.zero_grad()
        loss_now().mean().backward()
        optimiser.step()
    loss_end = loss_now().mean().item()
    tv_end = total_variation(policy_distribution(head, toy, all_hidden, all_prior, all_actions), target)
    # Measured (seed 0): TB 1.44 -> 0.049, TV(P_F, π*) 0.242 (the prior) -> 0.101, log Z 1.173 vs 1.185.
    assert loss_end < 0.1 * loss_start
    assert tv_end < 0.6 * tv_start
    assert abs(head.log_z(hidden[:1, 0]).item() - LAM * toy.target(LAM)[1]) < 0.1
