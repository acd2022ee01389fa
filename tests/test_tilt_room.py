"""tilt_room: p's coverage of π*_λ from stored draws, against the closed form for Gaussian rewards."""


import numpy as np
import pytest

from benchmarks.tilt_room import RoomConfig, prior_rewards, room_rows, summarise  # noqa: E402
from data.buffer import SOURCES, BufferWriter, PromptRecord  # noqa: E402


def test_gaussian_rewards_give_the_closed_form_ceiling_kl_and_gap():
    # r ~ N(μ, σ²) under p: π*_λ = N(μ + λσ², σ²), N / ESS → exp(λ²σ²), KL(π*‖p) = λ²σ²/2.
    sigma, n = 0.2, 400_000
    r = np.random.default_rng(0).normal(-0.7, sigma, n)
    rows = room_rows({"w": r}, [2.0, 5.0])
    for row in rows:
        lam = row["lam"]
        assert row["ceiling"] == pytest.approx(np.exp((lam * sigma) ** 2), rel=0.02)
        assert row["ceiling_half_draws"] == pytest.approx(np.exp((lam * sigma) ** 2), rel=0.03)
        assert row["kl_target_prior"] == pytest.approx((lam * sigma) ** 2 / 2, rel=0.03)
        assert row["reward_gap"] == pytest.approx(lam * sigma**2, rel=0.02)
    (at_2, at_5) = summarise(rows)
    assert at_2["ceiling"] < at_5["ceiling"] and at_5["share_above_claim"] == 0.0


def test_only_draws_from_p_are_read_pooled_per_prompt_across_buffers(tmp_path):
    def write(path, key, rewards, sources):
        n = len(rewards)
        record = PromptRecord(key=key, task_index=0, prompt_tokens=np.arange(3), lengths=np.ones(n, int),
                              actions=np.zeros(n, int), log_prior=np.zeros(n), reward=np.array(rewards),
                              source=np.array(sources))
        with BufferWriter(path, "fp", {"config": {}}) as writer:
            writer.append(record)
        return str(path)

    tree, prior = SOURCES["tree_path"], SOURCES["prior_sample"]
    a = write(tmp_path / "a.h5", "k", [9.0, -1.0, -2.0], [tree, prior, prior])
    b = write(tmp_path / "b.h5", "k", [-3.0], [prior])
    rewards = prior_rewards([a, b])
    assert list(rewards) == ["k"] and sorted(rewards["k"]) == [-3.0, -2.0, -1.0]
    with pytest.raises(ValueError, match="prior_sample"):
        prior_rewards([write(tmp_path / "c.h5", "t", [1.0], [tree])])


def test_bad_room_config_is_named():
    with pytest.raises(ValueError, match="lams"):
        RoomConfig(lams=[0.0, 1.0])
    with pytest.raises(ValueError, match="buffer"):
        RoomConfig(buffers=[])
