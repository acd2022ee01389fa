"""Shared fixtures: a tiny float64 Llama (no weights needed) and the shipped tokenizer."""

from __future__ import annotations

import pytest

from sadt.lm.backend import TorchLM
from sadt.lm.fetch import base_model_dir, is_fetched
from sadt.lm.tiny import tiny_llama

__all__ = ["tiny_llama"]  # the tests import it from here


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


def interrupt_reward_at(monkeypatch, call: int) -> None:
    """Make the forecast reward's `call`-th call raise KeyboardInterrupt, as Ctrl-C there would."""
    from search.forecast_task import ForecastTask

    calls = {"n": 0}
    reward_fn = ForecastTask.reward_fn

    def interrupting(task, sequences):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return reward_fn(task, sequences)

    monkeypatch.setattr(ForecastTask, "reward_fn", interrupting)
