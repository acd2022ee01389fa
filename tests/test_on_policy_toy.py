"""On-policy training drives P_F to π* on the enumerable toy (issue 36): draws from the current P_F, tempered
as `search.harvest`'s exploration tempers them, each batch weighted by nothing, and the balance losses, which
are minimised at P_F = π* whatever policy drew the data. KL is exact, by enumeration."""

import itertools

import numpy as np
import pytest
import torch
from toy_problem import ACTION_IDS, PROMPT, Toy, policy_step_log_probs

from sadt import losses
from sadt.rollout import rollout
from sadt.value import HeadValue
from search.harvest import Exploration

LAM = 5.0


class TableQ(torch.nn.Module):
    """A learnable Q(s, ·) per toy state, looked up by the state's hidden vector (as `ExactHead` is)."""

    def __init__(self, toy: Toy) -> None:
        super().__init__()
        prefixes = [list(p) for t in range(toy.length) for p in itertools.product(range(3), repeat=t)]
        hidden, _ = toy.lm.path_states(toy.lm.prefill(PROMPT), [[ACTION_IDS[a] for a in p] for p in prefixes],
                                       ACTION_IDS)
        self.keys = hidden[torch.arange(len(prefixes)), torch.tensor([len(p) for p in prefixes])].double()
        self.q = torch.nn.Parameter(torch.zeros(len(prefixes), 3, dtype=torch.float64))
        self.log_z = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(hidden.reshape(-1, hidden.shape[-1]).double(), self.keys).argmin(dim=1)
        return self.q[nearest].reshape(*hidden.shape[:-1], 3)


def kl_to_target(toy: Toy, head: TableQ, all_hidden: torch.Tensor, target: np.ndarray) -> float:
    """KL(π*‖P_F) by enumeration."""
    with torch.no_grad():
        log_pf = policy_step_log_probs(toy, LAM, head(all_hidden).numpy()).sum(axis=1)
    return float(np.sum(target * (np.log(target) - log_pf)))


@pytest.mark.parametrize("loss", ["vargrad", "tb"])
def test_on_policy_balance_training_with_exploration_drives_p_f_to_the_target(loss):
    toy = Toy()
    target, _ = toy.target(LAM)
    prompt = toy.lm.prefill(PROMPT)
    all_hidden, _ = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in toy.sequences], ACTION_IDS)
    all_hidden = all_hidden[:, :-1]
    head = TableQ(toy)
    optimiser = torch.optim.Adam([{"params": [head.q], "lr": 0.01}, {"params": [head.log_z], "lr": 0.1}])
    exploration, rng = Exploration(), np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    start = kl_to_target(toy, head, all_hidden, target)  # P_F = p at the start
    for _ in range(600):
        temperature, _ = exploration.batch_policy(rng)
        with torch.no_grad():
            out = rollout(toy.lm, prompt, ACTION_IDS, toy.grammar, [[]] * 32, temperature=temperature,
                          generator=generator, value_head=HeadValue(head), guide_lam=LAM)
        sequences = out.full_sequences([[]] * 32)
        hidden, logits = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
        actions = torch.tensor(sequences)
        args = (head(hidden[:, :-1]), torch.log_softmax(logits[:, :-1].double(), dim=-1), actions,
                torch.ones_like(actions, dtype=torch.bool))
        reward = torch.from_numpy(toy.reward(sequences))
        if loss == "vargrad":
            value = losses.vargrad(*args, reward, torch.zeros(32, dtype=torch.long), LAM)
        else:
            value = losses.trajectory_balance(*args, head.log_z.expand(32), reward, LAM).mean()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    end = kl_to_target(toy, head, all_hidden, target)
    assert start > 0.6 and end < 0.03, (start, end)  # KL(π*‖p) = 0.66 falls twenty-fold
