"""Issue 36.1: a replay buffer of each prompt's best draws across rounds, copied whole; one prompt's draws alone."""

import dataclasses

import numpy as np
import pytest
from buffer_records import FINGERPRINT, META, make_record

from data.buffer import BufferError, BufferWriter, read_buffer
from data.buffer_select import best_draws, prompts_draws


def with_log_q(record, reward, log_q, actions=None):
    """`record` with these rewards and log q (and, optionally, every trajectory's actions set to `actions`)."""
    record = dataclasses.replace(record, reward=np.asarray(reward, float), log_q=np.asarray(log_q, float))
    if actions is not None:
        record = dataclasses.replace(record, actions=np.concatenate([np.asarray(a) for a in actions]),
                                     lengths=np.array([len(a) for a in actions]),
                                     log_prior=-np.ones(sum(map(len, actions)), np.float32), values=None, visits=None)
    return record


def write(path, records, meta=META):
    with BufferWriter(path, FINGERPRINT, meta) as writer:
        for record in records:
            writer.append(record)
    return path


def test_each_prompt_keeps_its_best_distinct_draws_of_every_round_with_everything_they_carried(tmp_path):
    a0, b0 = make_record(0, n_traj=3), make_record(1, n_traj=3)
    round_1 = write(tmp_path / "r1.h5", [with_log_q(a0, [0.1, 0.9, 0.5], [-1, -2, -3]),
                                         with_log_q(b0, [0.3, 0.2, 0.1], [-4, -5, -6])])
    same = [[1, 2, 3], [1, 2, 3], [4, 5]]  # round 2 draws prompt 0's sequence [1, 2, 3] twice
    round_2 = write(tmp_path / "r2.h5", [with_log_q(a0, [0.95, 0.95, 0.0], [-7, -8, -9], actions=same)])
    out = best_draws([round_1, round_2], tmp_path / "replay.h5", per_prompt=2)
    replay, first = read_buffer(out), read_buffer(round_1)
    assert replay.prompt_keys() == [a0.key, b0.key]
    kept = [replay.trajectory(i) for i in range(replay.n_trajectories)]
    assert [float(t["reward"]) for t in kept] == [0.95, 0.9, 0.3, 0.2]  # the duplicate 0.95 is kept once
    assert [float(t["log_q"]) for t in kept] == [-7, -2, -4, -5]
    np.testing.assert_array_equal(kept[0]["actions"], [1, 2, 3])
    for copy, original in ((kept[1], first.trajectory(1)), (kept[2], first.trajectory(3))):
        for name in ("actions", "log_prior", "values", "visits", "reward_task", "source"):
            np.testing.assert_array_equal(copy[name], original[name], err_msg=name)
    np.testing.assert_array_equal(replay.arrays["prompt_tokens"], first.arrays["prompt_tokens"])
    assert replay.meta == first.meta and not (tmp_path / "replay.h5.partial").exists()


def test_buffers_of_other_settings_or_without_log_q_are_refused_by_name(tmp_path):
    record = with_log_q(make_record(0, n_traj=2), [0.1, 0.2], [-1, -2])
    ours = write(tmp_path / "ours.h5", [record])
    other = write(tmp_path / "other.h5", [record], meta={**META, "lam": 5.0})
    with pytest.raises(BufferError, match="lam"):
        best_draws([ours, other], tmp_path / "replay.h5", per_prompt=1)
    old = write(tmp_path / "old.h5", [make_record(0, n_traj=2)])  # log q unknown (NaN)
    with pytest.raises(BufferError, match="log q"):
        best_draws([old], tmp_path / "replay.h5", per_prompt=1)
    assert not any(p.name.startswith("replay") for p in tmp_path.iterdir())  # nothing half-written


def test_a_prompts_draws_alone_are_copied_whole_log_q_unknown_or_not_and_a_missing_prompt_is_named(tmp_path):
    a0, b0 = make_record(0, n_traj=3), make_record(1, n_traj=2)  # b0: p's draws, log q unknown (NaN)
    source = write(tmp_path / "draws.h5", [with_log_q(a0, [0.1, 0.9, 0.5], [-1, -2, -3]), b0])
    original = read_buffer(source)
    for key, first, n in ((b0.key, 3, 2), (a0.key, 0, 3)):
        alone = read_buffer(prompts_draws(source, tmp_path / f"{key.replace('/', '_')}.h5", [key]))
        assert alone.prompt_keys() == [key] and alone.n_trajectories == n and alone.meta == original.meta
        for i in range(n):
            for name in ("actions", "log_prior", "reward", "source"):
                np.testing.assert_array_equal(alone.trajectory(i)[name], original.trajectory(first + i)[name])
            np.testing.assert_array_equal(alone.trajectory(i)["log_q"], original.trajectory(first + i)["log_q"])
    with pytest.raises(ValueError, match="no prompt 'nowhere'"):
        prompts_draws(source, tmp_path / "none.h5", ["nowhere"])
    assert not (tmp_path / "none.h5").exists()
