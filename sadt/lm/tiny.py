"""A tiny random Llama in float64: the LM of unit tests and of the enumerable toy benchmark (no weights needed)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, vocab_size: int = 64) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights in float64, so batched-vs-single checks are exact."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()
