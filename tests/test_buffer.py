import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from buffer_records import FINGERPRINT, META, make_record

from data.buffer import SCHEMA_VERSION, BufferError, BufferWriter, PromptRecord, read_buffer
from data.buffer_cli import main as buffer_cli
from data.buffer_cli import summary
from data.buffer_merge import merge
from data.loader import TrajectoryDataset, pad_collate, trajectory_loader

STEP = ("actions", "log_prior", "values", "visits")
TRAJ = ("lengths", "reward", "reward_task", "reward_spectral", "source")


def write(path, indices):
    with BufferWriter(path, FINGERPRINT, META) as writer:
        for i in indices:
            writer.append(make_record(i))


def assert_holds(buffer, indices):
    """The buffer holds exactly the records `indices`, field by field."""
    assert buffer.prompt_keys() == [make_record(i).key for i in indices]
    offsets, traj = buffer.offsets, 0
    for p, i in enumerate(indices):
        record = make_record(i)
        np.testing.assert_array_equal(buffer.arrays["prompt_task_index"][p], i)
        assert buffer.arrays["prompt_root_value"][p] == record.root_value
        n = len(record.lengths)
        for name in TRAJ:
            np.testing.assert_array_equal(buffer.arrays[name][traj : traj + n], getattr(record, name))
        np.testing.assert_array_equal(buffer.arrays["prompt_index"][traj : traj + n], i)
        steps = slice(offsets[traj], offsets[traj + n])
        for name in STEP:
            expected = getattr(record, name).astype(buffer.arrays[name].dtype)
            np.testing.assert_array_equal(buffer.arrays[name][steps], expected)
        traj += n
    assert traj == buffer.n_trajectories


def test_round_trip_of_every_field(tmp_path):
    path = tmp_path / "b.h5"
    write(path, range(4))
    buffer = read_buffer(path, FINGERPRINT)
    assert buffer.meta == META and buffer.lm_fingerprint == FINGERPRINT
    assert_holds(buffer, range(4))
    tokens = np.split(buffer.arrays["prompt_tokens"], np.cumsum(buffer.arrays["prompt_lengths"])[:-1])
    for i, t in enumerate(tokens):
        np.testing.assert_array_equal(t, make_record(i).prompt_tokens)


def test_reopening_appends_and_remembers_done_keys(tmp_path):
    path = tmp_path / "b.h5"
    write(path, range(2))
    with BufferWriter(path, FINGERPRINT, META) as writer:
        assert writer.done_keys() == {make_record(0).key, make_record(1).key}
        writer.append(make_record(2))
    assert_holds(read_buffer(path), range(3))


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3, 1.0])
def test_sigkill_leaves_every_committed_trajectory_intact(tmp_path, delay):
    path = tmp_path / "b.h5"
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("buffer_records.py")), str(path)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdout.readline().strip() == b"ready"  # at least 3 prompts are committed
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    buffer = read_buffer(path, FINGERPRINT)
    committed = buffer.n_prompts
    assert committed >= 3
    assert_holds(buffer, range(committed))
    # The writer that died left the file flagged as open: appending again recovers it first.
    write(path, [committed])
    assert_holds(read_buffer(path), range(committed + 1))


def test_a_reader_sees_committed_prompts_while_the_writer_is_open(tmp_path):
    path = tmp_path / "b.h5"
    with BufferWriter(path, FINGERPRINT, META) as writer:
        writer.append(make_record(0))
        writer.append(make_record(1))
        code = f"from data.buffer import read_buffer; print(read_buffer({str(path)!r}).n_prompts)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "2"


def test_merge_of_three_shards_equals_one_file(tmp_path):
    shards = [tmp_path / f"shard{i}.h5" for i in range(3)]
    for shard, indices in zip(shards, ([0, 1], [2, 3, 4], [5])):
        write(shard, indices)
    merged = merge(shards, tmp_path / "merged.h5")
    single = tmp_path / "single.h5"
    write(single, range(6))
    a, b = read_buffer(merged), read_buffer(single)
    assert set(a.arrays) == set(b.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    with h5py.File(merged, "r") as f:
        assert f["actions"].is_virtual and f.id.get_filesize() < 100_000  # views, not copies


def corrupt_variants(tmp_path):
    good = tmp_path / "good.h5"
    write(good, range(2))
    yield "random bytes", lambda p: p.write_bytes(os.urandom(4096)), "not a readable HDF5 file"
    yield "foreign hdf5", lambda p: h5py.File(p, "w").create_dataset("x", data=[1]), "not an S-ADT buffer"

    def edit(change):
        def apply(p):
            p.write_bytes(good.read_bytes())
            with h5py.File(p, "r+") as f:
                change(f)
        return apply

    yield "schema", edit(lambda f: f.attrs.__setitem__("schema_version", SCHEMA_VERSION + 1)), "schema version"
    yield "missing", edit(lambda f: f.__delitem__("log_prior")), "'log_prior' is missing"
    yield "lengths", edit(lambda f: f["actions"].resize((3,))), "`actions` has 3 rows"


def test_foreign_and_corrupt_files_are_rejected_by_name(tmp_path):
    for label, make, message in corrupt_variants(tmp_path):
        path = tmp_path / f"{label.replace(' ', '_')}.h5"
        make(path)
        with pytest.raises(BufferError, match=message) as err:
            read_buffer(path)
        assert str(path) in str(err.value), label


def test_another_lm_is_rejected_for_reading_and_appending(tmp_path):
    path = tmp_path / "b.h5"
    write(path, [0])
    with pytest.raises(BufferError, match="written for LM"):
        read_buffer(path, "other-lm")
    with pytest.raises(BufferError, match="written for LM"):
        BufferWriter(path, "other-lm", META)
    assert_holds(read_buffer(path), [0])  # nothing was touched


def test_loader_pads_and_filters(tmp_path):
    path = tmp_path / "b.h5"
    write(path, range(3))
    buffer = read_buffer(path)
    dataset = TrajectoryDataset(buffer, sources=["rollout"], min_reward=0.0)
    expected = np.flatnonzero((buffer.arrays["source"] == 1) & (buffer.arrays["reward"] >= 0))
    assert len(dataset) == len(expected) > 0
    batch = pad_collate([dataset[i] for i in range(len(dataset))])
    lengths = buffer.arrays["lengths"][expected]
    assert batch["actions"].shape == (len(expected), lengths.max())
    assert batch["mask"].sum().item() == lengths.sum() and (batch["actions"][~batch["mask"]] == -1).all()
    np.testing.assert_array_equal(batch["reward"].numpy(), buffer.arrays["reward"][expected])
    with pytest.raises(ValueError, match="unknown trajectory source"):
        TrajectoryDataset(buffer, sources=["beam"])
    text = summary(str(path))
    assert "3 prompts, 15 trajectories" in text and "source rollout" in text


def test_cli_merges_and_inspects(tmp_path, capsys):
    shards = [tmp_path / "a.h5", tmp_path / "b.h5"]
    write(shards[0], [0])
    write(shards[1], [1])
    assert buffer_cli(["merge", str(tmp_path / "m.h5"), *map(str, shards)]) == 0
    assert "2 prompts, 10 trajectories" in capsys.readouterr().out
    assert buffer_cli(["inspect", str(tmp_path / "missing.h5")]) == 2
    assert "no such buffer file" in capsys.readouterr().err


def test_batched_fetch_equals_item_by_item_collate(tmp_path):
    path = tmp_path / "b.h5"
    write(path, range(3))
    dataset = TrajectoryDataset(read_buffer(path), sources=["tree_path", "tree_sample"])
    positions = [4, 0, 2, 1]
    fast = dataset.__getitems__(positions)
    slow = pad_collate([dataset[i] for i in positions])
    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], equal_nan=True, msg=name)
    loaded = next(iter(trajectory_loader(dataset, batch_size=4, shuffle=False)))
    torch.testing.assert_close(loaded["actions"], pad_collate([dataset[i] for i in range(4)])["actions"])


def test_a_vocabulary_sized_action_space_is_stored_whole_and_a_digit_buffer_refuses_token_ids(tmp_path):
    """Text tasks act over an LM's vocabulary: their token ids must not wrap in an int8 column."""
    record = make_record(0)
    tokens = np.random.default_rng(0).integers(0, 49_152, size=len(record.actions))
    text = PromptRecord(**{**vars(record), "actions": tokens})
    with BufferWriter(tmp_path / "text.h5", FINGERPRINT, {**META, "n_actions": 49_152}) as writer:
        writer.append(text)
    stored = read_buffer(tmp_path / "text.h5").arrays["actions"]
    assert stored.dtype == np.int32
    np.testing.assert_array_equal(stored, tokens)
    with BufferWriter(tmp_path / "digits.h5", FINGERPRINT, META) as writer:
        with pytest.raises(BufferError, match="`actions` holds int8 values: .* does not fit"):
            writer.append(text)
    assert read_buffer(tmp_path / "digits.h5").n_trajectories == 0  # nothing half-written
    with pytest.raises(BufferError, match=r"n_actions = 49152, .*digits.h5 has \(unset\)"):
        merge([tmp_path / "text.h5", tmp_path / "digits.h5"], tmp_path / "merged.h5")


def as_schema_1(path):
    """Rewrite a buffer as schema 1 wrote it: no `log_q`."""
    with h5py.File(path, "r+") as f:
        del f["log_q"]
        f.attrs["schema_version"] = 1


def test_a_draws_log_q_is_stored_and_a_schema_1_buffer_reads_appends_and_merges(tmp_path):
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    write(old, [0])
    as_schema_1(old)
    buffer = read_buffer(old)  # schema 1 reads: log_q unknown
    assert np.isnan(buffer.arrays["log_q"]).all() and buffer.n_prompts == 1
    with BufferWriter(old, FINGERPRINT, META) as writer:  # appending upgrades it: old rows NaN, new ones stored
        record = make_record(1)
        record.log_q = -np.arange(len(record.lengths), dtype=np.float64)
        writer.append(record)
    with h5py.File(old, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
    log_q = read_buffer(old).arrays["log_q"]
    n0 = len(make_record(0).lengths)
    assert np.isnan(log_q[:n0]).all()
    np.testing.assert_array_equal(log_q[n0:], record.log_q)
    write(new, [2])
    as_schema_1(new)
    merged = merge([old, new], tmp_path / "m.h5")  # a schema-1 shard's log_q is NaN in the merge
    np.testing.assert_array_equal(read_buffer(merged).arrays["log_q"][n0:-len(make_record(2).lengths)], record.log_q)
    assert np.isnan(read_buffer(merged).arrays["log_q"][-1])
