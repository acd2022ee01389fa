"""Issue 35.1: what a sampler reads besides the LM is one `Value`, whatever the user hands it."""

import numpy as np
import pytest
import torch

from sadt.codec import Codec
from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.head_card import HeadCard
from sadt.partial_reward import PartialRewardValue, ShapedValue
from sadt.value import HeadValue, SearchHead, Value
from search.forecast_task import ForecastTask


def never_built() -> list[list[int]]:
    raise AssertionError("a value on hidden states alone built the rows' sequences")


@pytest.fixture(scope="module")
def task(base_tokenizer):
    return ForecastTask.build(Codec(base_tokenizer), np.linspace(1, 3, 24), 4)


def test_every_head_form_binds_to_one_value_once_with_the_lambda_its_card_gives(task):
    n_actions, width = len(task.codec.action_token_ids), 16
    plain = MLPFlowHead(torch.randn(n_actions, width), FlowHeadConfig(hidden=8))
    shaped = MLPFlowHead(torch.randn(n_actions, width), FlowHeadConfig(hidden=8, value_form="soft_ahead"))
    loaded = SearchHead(plain, HeadCard.for_head(plain, lm_fingerprint="lm", lam=3.0))
    loaded_shaped = SearchHead(shaped, HeadCard.for_head(shaped, lm_fingerprint="lm", lam=15.0))
    hidden, sequences = torch.randn(2, width), [[], [1, 2]]
    assert task.value(None) is None
    bound = {"bare": task.value(plain), "loaded": task.value(loaded), "shaped": task.value(loaded_shaped, lam=15.0),
             "parameter-free": task.value("digit_ahead_reward")}
    assert all(isinstance(v, Value) and task.value(v) is v for v in bound.values())  # binding twice is once
    assert [type(v) for v in bound.values()] == [HeadValue, HeadValue, ShapedValue, PartialRewardValue]
    assert [v.trained_lam for v in bound.values()] == [None, 3.0, 15.0, None]
    torch.testing.assert_close(bound["loaded"](hidden, never_built), plain(hidden))  # no sequences built
    q = bound["shaped"](hidden, lambda: sequences)
    assert q.shape == (2, n_actions) and torch.isfinite(q).all()
