"""Buffers that could lose data or read silently wrong (issue 37, items 1, 3, 4, 7): two writers, resumes and
merges of different settings, moved shards, corrupt metadata, prompts that share a task index."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from buffer_records import FINGERPRINT, META, make_record

from data.buffer import BufferError, BufferWriter, read_buffer
from data.buffer_merge import merge
from data.loader import TrajectoryDataset
from trainers.data import _items

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def write(path, indices, meta=META):
    with BufferWriter(path, FINGERPRINT, meta) as writer:
        for i in indices:
            writer.append(make_record(i))


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "data.buffer_cli", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_a_second_writer_is_refused_while_the_first_writes_and_loses_nothing(tmp_path):
    path = tmp_path / "b.h5"
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("buffer_records.py")), str(path)],
                             stdout=subprocess.PIPE, env=ENV)
    try:
        assert child.stdout.readline().strip() == b"ready"
        with pytest.raises(BufferError, match="another process is writing"):
            BufferWriter(path, FINGERPRINT, META)
    finally:
        child.kill()
        child.wait()
    buffer = read_buffer(path)  # the live writer's file was not "recovered" under it
    assert buffer.n_prompts >= 3
    assert buffer.prompt_keys() == [make_record(i).key for i in range(buffer.n_prompts)]
    write(path, [buffer.n_prompts])  # a dead writer's lock is gone: the next writer recovers and appends
    assert read_buffer(path).n_prompts == buffer.n_prompts + 1


def test_one_process_cannot_open_two_writers_on_one_file(tmp_path):
    path = tmp_path / "b.h5"
    with BufferWriter(path, FINGERPRINT, META):
        with pytest.raises(BufferError, match="another process is writing"):
            BufferWriter(path, FINGERPRINT, META)
    write(path, [0])  # released on close


@pytest.mark.parametrize("change, key", [
    ({"lam": 3.0}, "lam"),
    ({"codec": {"precision": 2}}, "codec.precision"),
    ({"config": {"series": ["Wine"]}}, "config.series"),
])
def test_a_resume_with_other_defining_settings_is_refused_naming_the_setting(tmp_path, change, key):
    path = tmp_path / "b.h5"
    write(path, [0])
    before = path.read_bytes()
    with pytest.raises(BufferError, match=rf"b.h5 was written with {key} = .*this run has"):
        write(path, [1], {**META, **change})
    assert path.read_bytes() == before
    write(path, [1], {**META, "device": "cuda", "shard": [1, 2]})  # how it ran is not what it means


def test_a_buffer_written_before_a_reward_setting_existed_resumes_under_its_default_only(tmp_path):
    """`record_penalty` joined the reward after buffers were written without it: they were written at 0."""
    path = tmp_path / "b.h5"
    write(path, [0], {**META, "config": {"reward": {"gamma": 1.0}}})
    write(path, [1], {**META, "config": {"reward": {"gamma": 1.0, "record_penalty": 0.0}}})
    with pytest.raises(BufferError, match=r"config.reward.record_penalty = 0.0, this run has 1.0"):
        write(path, [2], {**META, "config": {"reward": {"gamma": 1.0, "record_penalty": 1.0}}})
    assert read_buffer(path).n_trajectories == 2 * len(make_record(0).lengths)


def test_a_merge_of_buffers_with_another_precision_is_refused_naming_the_key(tmp_path):
    a, b, out = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "m.h5"
    write(a, [0])
    write(b, [1], {**META, "codec": {"precision": 2}})
    proc = cli("merge", out, a, b)
    assert proc.returncode == 2 and "codec.precision" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_merged_buffer_whose_shard_moved_names_the_missing_shard(tmp_path):
    a, b, out = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "m.h5"
    write(a, [0])
    write(b, [1])
    merge([a, b], out)
    assert read_buffer(out).n_prompts == 2
    b.rename(tmp_path / "elsewhere.h5")
    with pytest.raises(BufferError, match=r"merged over shard .*b.h5, which is missing"):
        read_buffer(out)
    proc = cli("inspect", out)
    assert proc.returncode == 2 and "b.h5" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def corrupted(good: Path, out: Path, fraction: float) -> Path:
    """`good` with 2 KB of random bytes written at `fraction` of its length."""
    data = bytearray(good.read_bytes())
    start = int(len(data) * fraction)
    data[start : start + 2048] = np.random.default_rng(0).bytes(2048)
    out.write_bytes(bytes(data))
    return out


def test_corrupt_metadata_is_one_line_at_once_not_a_hang(tmp_path):
    good = tmp_path / "good.h5"
    write(good, range(8))
    refused = 0
    for fraction in (0.02, 0.10, 0.14, 0.20):  # the object headers and B-trees of this layout (data lies later)
        bad = corrupted(good, tmp_path / f"bad{fraction}.h5", fraction)
        proc = cli("inspect", bad, timeout=60)  # under SWMR this retried for over 30 minutes
        assert proc.returncode in (0, 2), proc.stderr
        if proc.returncode == 2:
            refused += 1
            assert bad.name in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert refused >= 2


def test_prompts_that_share_a_task_index_keep_their_own_trajectories(tmp_path):
    path = tmp_path / "b.h5"
    with BufferWriter(path, FINGERPRINT, META) as writer:
        for i in range(2):
            record = make_record(i)
            record.task_index = 7  # e.g. two task sets' index 7 in one buffer
            writer.append(record)
    buffer = read_buffer(path)
    n0 = len(make_record(0).lengths)
    np.testing.assert_array_equal(buffer.prompt_rows, [0] * n0 + [1] * len(make_record(1).lengths))
    keys = [item["key"] for item in _items(buffer, 0, None)]
    assert keys == [make_record(0).key] * n0 + [make_record(1).key] * (len(keys) - n0)
    batch = TrajectoryDataset(buffer).__getitems__(list(range(buffer.n_trajectories)))
    assert batch["prompt_index"].unique().numel() == 2  # VarGrad groups two prompts, not one


def test_more_windows_than_a_series_has_is_refused_on_the_command_line(tmp_path):
    config = tmp_path / "h.yaml"
    config.write_text(f"series: [Wooly]\nwindows_per_series: 500\noutput: {tmp_path / 'h.h5'}\n")
    proc = subprocess.run([sys.executable, "-m", "search.harvest", "--config", str(config)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "windows_per_series = 500" in proc.stderr and "Wooly" in proc.stderr
    assert not (tmp_path / "h.h5").exists()


@pytest.mark.base_model
def test_a_second_harvest_on_a_buffer_being_written_is_one_line(tmp_path, base_tokenizer):
    path = tmp_path / "b.h5"
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("buffer_records.py")), str(path)],
                             stdout=subprocess.PIPE, env=ENV)
    try:
        assert child.stdout.readline().strip() == b"ready"
        config = tmp_path / "h.yaml"
        config.write_text(f"series: [Wooly]\nwindows_per_series: 1\noutput: {path}\n")
        proc = subprocess.run([sys.executable, "-m", "search.harvest", "--config", str(config)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
    finally:
        child.kill()
        child.wait()
    assert proc.returncode == 2 and "another process is writing" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stderr  # refused before the model's seconds of loading


@pytest.mark.base_model
def test_a_harvest_resumed_with_another_lambda_is_refused_on_the_command_line(tmp_path, base_tokenizer):
    from sadt.cli import run_command
    from search.harvest import main

    out = tmp_path / "h.h5"
    base = (f"series: [Wooly]\nwindows_per_series: 1\ncontext_length: 16\nhorizon: 4\nsampler: prior\n"
            f"output: {out}\nsearch:\n  n_samples: 2\n  batch_size: 2\n")

    def config(extra: str) -> Path:
        path = tmp_path / "h.yaml"
        path.write_text(base + extra)
        return path

    assert run_command(main, ["--config", str(config("  lam: 2.0\n"))]) == 0  # in-process: no second torch import
    before = out.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "search.harvest", "--config", str(config("  lam: 5.0\n"))], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "was written with lam = 2.0, this run has 5.0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and out.read_bytes() == before
    assert "Loading weights" not in proc.stderr  # refused before the model's seconds of loading
