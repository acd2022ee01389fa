"""The LoRA head: the prior never moves, adapted states are exact, it trains, and it runs as a search backend."""

import pytest
import torch
from conftest import tiny_llama
from toy_problem import ACTION_IDS, PROMPT, Toy

from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.lm.backend import TorchLM
from sadt.lora_head import LoRAHeadConfig, LoRALM, adapted_path_states, add_lora, frozen, lora_parameters
from sadt.losses import trajectory_balance
from search.config import search_config
from search.tree_search import TreeSearch

PATHS = [[3, 5, 7], [9], [5, 5]]


def perturbed_lora(seed: int = 0, top_layers: int = 1):
    model = tiny_llama(seed)
    reference = TorchLM(tiny_llama(seed))
    peft_model = add_lora(model, LoRAHeadConfig(r=4, top_layers=top_layers))
    with torch.no_grad():
        for p in lora_parameters(peft_model):
            p.add_(0.2 * torch.randn_like(p))  # lora_B starts at zero: make the adapter do something
    return peft_model, reference


def test_adapter_only_touches_the_top_layers_and_never_the_prior():
    peft_model, reference = perturbed_lora()
    names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert names and all(".layers.1." in n for n in names)  # 2-layer model, top_layers = 1
    lm = TorchLM(peft_model.get_base_model())
    expected = reference.path_states(reference.prefill(PROMPT), PATHS, ACTION_IDS)[1]
    with frozen(peft_model):
        prior_logits = lm.path_states(lm.prefill(PROMPT), PATHS, ACTION_IDS)[1]
    adapted_logits = lm.path_states(lm.prefill(PROMPT), PATHS, ACTION_IDS)[1]
    torch.testing.assert_close(prior_logits, expected, rtol=0, atol=1e-12)
    assert (adapted_logits - expected).abs().max() > 1e-3


def test_adapted_path_states_match_the_cached_backend():
    peft_model, _ = perturbed_lora()
    backend = LoRALM(peft_model)
    hidden, _ = backend.path_states(backend.prefill(PROMPT), PATHS, ACTION_IDS)
    direct = adapted_path_states(peft_model, PROMPT, PATHS)
    for i, path in enumerate(PATHS):  # real states only
        torch.testing.assert_close(direct[i, : len(path) + 1], hidden[i, : len(path) + 1], rtol=0, atol=1e-10)


def test_lora_head_trains_on_toy_trajectories():
    toy = Toy()
    sequences = [a.tolist() for a in toy.search(2.0, 300).tree.trajectories().split("actions")]
    rewards = torch.tensor(toy.reward(sequences))
    peft_model = add_lora(toy.lm.model, LoRAHeadConfig(r=4, top_layers=1))
    lm = TorchLM(peft_model.get_base_model())
    with frozen(peft_model):
        _, logits = lm.path_states(lm.prefill(PROMPT), [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
    log_prior = torch.log_softmax(logits[:, :-1].clone(), dim=-1)
    head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].detach(), FlowHeadConfig(hidden=16)).double()
    params = [*head.parameters(), *lora_parameters(peft_model)]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    actions, mask = torch.tensor(sequences), torch.ones(len(sequences), toy.length, dtype=torch.bool)
    token_paths = [[ACTION_IDS[a] for a in s] for s in sequences]

    def loss_now():
        hidden = adapted_path_states(peft_model, PROMPT, token_paths)[:, :-1]
        return trajectory_balance(head.q(hidden), log_prior, actions, mask, head.log_z(hidden[:, 0]), rewards, 2.0)

    start = loss_now().mean().item()
    for _ in range(40):
        optimiser.zero_grad()
        loss_now().mean().backward()
        optimiser.step()
    assert loss_now().mean().item() < 0.3 * start  # measured 1.6 -> 0.1
    assert max(p.abs().max().item() for n, p in peft_model.named_parameters() if "lora_B" in n) > 0  # adapter learnt


def test_lora_backend_runs_the_hybrid_and_counts_both_forwards():
    toy = Toy()
    head = MLPFlowHead(torch.randn(3, 32, dtype=torch.float64), FlowHeadConfig(hidden=8)).double().requires_grad_(False)
    config = search_config(lam=2.0, n_rollouts=24, batch_size=8, progress=False, hybrid="visits")
    plain = TreeSearch(toy.lm, toy.problem, config, value_head=head.q).run()
    backend = LoRALM(add_lora(toy.lm.model, LoRAHeadConfig(r=4)))  # zero-init adapter: same states
    lora = TreeSearch(backend, toy.problem, config, value_head=head.q).run()
    assert lora.samples == plain.samples and lora.root_value == pytest.approx(plain.root_value, abs=1e-12)
    assert lora.nfe_tokens == 2 * plain.nfe_tokens
