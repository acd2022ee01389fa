"""The forward KL's weights (`trainers.task_values.DrawWeights`): per prompt and source, self-normalised
importance weights of π* ∝ p e^{λr}, a draw of P_F's weighed against the law that drew it."""

import math

import pytest
import torch

from data.buffer import SOURCES
from trainers.data import PromptTrajectories
from trainers.task_values import DrawWeights

LAM = 3.0
PRIOR, POLICY, TREE = (SOURCES[s] for s in ("prior_sample", "policy_sample", "tree_sample"))


def draws() -> list[dict]:
    """Two prompts; per prompt two draws of p, three of P_F (log q stored) and one tree path (no log q)."""
    items = []
    for prompt in (0, 1):
        for i, source in enumerate((PRIOR, PRIOR, POLICY, POLICY, POLICY, TREE)):
            log_q = math.nan if source in (PRIOR, TREE) else -2.0 - 0.7 * i - prompt
            items.append({"prompt_id": prompt, "source": source, "reward": -0.1 * i - 0.3 * prompt,
                          "log_p": -3.0 + 0.4 * i, "log_q": log_q})
    return items


def batch_of(items: list[dict]) -> dict:
    """The fields of `trainers.data.collate` the weights read."""
    return {"source": torch.tensor([x["source"] for x in items]),
            "prompt_index": torch.tensor([x["prompt_id"] for x in items]),
            "reward": torch.tensor([x["reward"] for x in items], dtype=torch.float32),
            "log_p_over_q": torch.tensor([x["log_p"] - x["log_q"] for x in items], dtype=torch.float64)}


@pytest.mark.parametrize("with_policy", [False, True])
def test_each_prompts_draws_of_each_source_average_one_with_p_over_q_for_pf_draws(with_policy):
    items = draws()
    weights = DrawWeights([PromptTrajectories(items)], LAM, with_policy)(batch_of(items))
    for prompt in (0, 1):
        for source in (PRIOR, POLICY):
            rows = [i for i, x in enumerate(items) if x["prompt_id"] == prompt and x["source"] == source]
            if source == POLICY and not with_policy:
                assert (weights[rows] == 0).all()
                continue
            log_w = torch.tensor([LAM * items[i]["reward"] + (items[i]["log_p"] - items[i]["log_q"]
                                                              if source == POLICY else 0.0) for i in rows])
            torch.testing.assert_close(weights[rows], len(rows) * torch.softmax(log_w.double(), 0), rtol=1e-5, atol=0)
    assert (weights[[i for i, x in enumerate(items) if x["source"] == TREE]] == 0).all()


def test_a_batch_holding_part_of_a_prompts_draws_gets_the_weights_of_all_of_them():
    """The normalisers span the train and validation sets: a batch's weights do not depend on its company."""
    items = draws()
    everyone = DrawWeights([PromptTrajectories(items[:7]), PromptTrajectories(items[7:])], LAM, True)
    whole = everyone(batch_of(items))
    torch.testing.assert_close(everyone(batch_of(items[2:4])), whole[2:4])


def test_pf_draws_without_a_stored_log_q_are_refused():
    items = draws()
    items[3]["log_q"] = math.nan  # harvested before log q was stored
    DrawWeights([PromptTrajectories(items)], LAM, with_policy=False)  # not read: no error
    with pytest.raises(ValueError, match="without a stored log q"):
        DrawWeights([PromptTrajectories(items)], LAM, with_policy=True)
