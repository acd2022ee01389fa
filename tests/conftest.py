"""Shared fixtures: a tiny float64 Llama (no weights needed) and the shipped tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sadt.lm.backend import TorchLM
from sadt.lm.fetch import base_model_dir, is_fetched


def tiny_llama(seed: int = 0, vocab_size: int = 64) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights in float64, so batched-vs-single checks are exact."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()


@pytest.fixture
def tiny_lm() -> TorchLM:
    return TorchLM(tiny_llama())


@pytest.fixture(scope="session")
def base_tokenizer():
    """The shipped SmolLM2 tokenizer (`make test` fetches the base model first)."""
    from transformers import AutoTokenizer

    path = base_model_dir()
    if not is_fetched(path):
        pytest.fail(f"{path} is missing: run `python -m sadt.lm.fetch` (make test does) before the tests")
    return AutoTokenizer.from_pretrained(path)
