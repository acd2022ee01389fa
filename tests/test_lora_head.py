"""The LoRA head: the prior never moves, adapted states are exact, it trains, and it runs as a search backend."""

import pytest
import torch
from conftest import tiny_llama
from toy_problem import ACTION_IDS, PROMPT, Toy

from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.grammar import TextGrammar
from sadt.lm.backend import TorchLM
from sadt.lora_head import (
    LoRAHeadConfig,
    LoRALM,
    adapted_path_states,
    adapted_states_from_layer_inputs,
    add_lora,
    first_adapted_layer,
    frozen,
    lora_parameters,
)
from sadt.losses import trajectory_balance
from search.config import search_config
from search.tree_search import TreeSearch
from trainers.features import LMFeatures
from trainers.options import FeatureConfig

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


def trainable_lora(top_layers: int) -> tuple[TorchLM, object]:
    """A frozen TorchLM with a perturbed adapter injected after it (as the trainer does: the adapter trains)."""
    lm = TorchLM(tiny_llama(0))
    peft_model = add_lora(lm.model, LoRAHeadConfig(r=4, top_layers=top_layers))
    with torch.no_grad():
        for p in lora_parameters(peft_model):
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return lm, peft_model


@pytest.mark.parametrize("top_layers", [1, 0])
def test_the_adapted_layers_alone_on_their_cached_inputs_give_the_whole_forward_and_its_gradients(top_layers):
    lm, peft_model = trainable_lora(top_layers)
    assert first_adapted_layer(peft_model) == (1 if top_layers == 1 else 0)
    prompt_inputs, path_inputs = lm.layer_inputs(lm.prefill(PROMPT), PATHS, first_adapted_layer(peft_model))
    prompt_inputs, path_inputs = prompt_inputs.clone(), path_inputs.clone()  # out of inference mode
    assert prompt_inputs.shape == (len(PROMPT), lm.hidden_size) and path_inputs.shape[:2] == (3, 3)
    lengths = [len(p) for p in PATHS]
    weights = torch.randn(3, 4, lm.hidden_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for states in (lambda: adapted_path_states(peft_model, PROMPT, PATHS),
                   lambda: adapted_states_from_layer_inputs(peft_model, prompt_inputs, path_inputs, lengths)):
        peft_model.zero_grad()
        hidden = states()
        real = torch.arange(4)[None] <= torch.tensor(lengths)[:, None]  # s_0..s_T of each path; the rest padding
        (hidden * weights * real[..., None]).sum().backward()
        results.append((hidden.detach() * real[..., None], [p.grad.clone() for p in lora_parameters(peft_model)]))
    (whole, whole_grads), (top, top_grads) = results
    torch.testing.assert_close(top, whole, rtol=0, atol=1e-10)
    assert all(g.abs().max() > 0 for g in whole_grads)
    for a, b in zip(top_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_the_trainers_lora_features_run_the_frozen_layers_once_per_trajectory(monkeypatch):
    lm, peft_model = trainable_lora(top_layers=1)
    prompts, paths = [(1, 2), (1, 2), (3, 4, 5)], [[3, 5, 7], [9], [5, 5]]
    actions = torch.full((3, 3), -1, dtype=torch.long)
    for i, path in enumerate(paths):
        actions[i, : len(path)] = torch.tensor(path)
    batch = {"prompts": prompts, "actions": actions, "mask": actions >= 0}
    features = LMFeatures(lm, list(range(64)), FeatureConfig(), "tiny", peft_model)
    features.attach(TextGrammar(n_actions=64, max_tokens=3, stop_actions=(0,)), None)
    calls, real_layer_inputs = [], TorchLM.layer_inputs
    monkeypatch.setattr(TorchLM, "layer_inputs", lambda *a, **k: calls.append(1) or real_layer_inputs(*a, **k))
    first, second = features(batch), features(batch)
    assert len(calls) == 2  # once per prompt, on the first batch only
    for i, (prompt, path) in enumerate(zip(prompts, paths)):
        expected = adapted_path_states(peft_model, list(prompt), [path])[0, : len(path)]
        torch.testing.assert_close(first.hidden[i, : len(path)], expected.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(second.hidden, first.hidden, rtol=0, atol=0)
    assert second.hidden.requires_grad  # the adapter trains through them


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
