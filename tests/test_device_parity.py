"""The device-parity benchmark's discrepancies (`benchmarks.device_parity.parity_row`) against hand-computed ones."""

import math

import pytest
import torch

from benchmarks.device_parity import parity_row


def log_probs(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_identical_log_probs_differ_by_nothing():
    reference = log_probs([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]])  # one path of two actions: (1, 3, 2)
    row = parity_row(reference, reference.clone(), torch.tensor([[0, 1]]))
    assert row == {"max |Δ log p(a|s)|": 0.0, "mean KL per state": 0.0, "max |Δ log p(x)|": 0.0}


def test_discrepancies_are_the_step_kl_and_the_taken_actions_path_log_prob():
    reference = log_probs([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]])
    other = log_probs([[[0.25, 0.75], [0.2, 0.8], [0.5, 0.5]]])
    row = parity_row(reference, other, torch.tensor([[1, 1]]))  # takes action 1 twice
    kl_first = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_last = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # the last state counts in the KL ...
    assert row["mean KL per state"] == pytest.approx((kl_first + kl_last) / 3, rel=1e-12)
    assert row["max |Δ log p(a|s)|"] == pytest.approx(abs(math.log(0.1 / 0.5)), rel=1e-12)
    # ... but takes no action: the path's log p is over the first two states only
    assert row["max |Δ log p(x)|"] == pytest.approx(abs(math.log(0.5) - math.log(0.75)), rel=1e-12)

