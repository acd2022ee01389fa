"""Issue 27's hostile inputs: each ends in one line that names the file, field or value, and exit 2 where
it is a command; nothing is overwritten or half-written."""

import importlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from buffer_records import FINGERPRINT, META, make_record
from in_process import in_process

from data.buffer import BufferWriter, read_buffer
from sadt.codec import fit_scaler
from sadt.config import ConfigError, load_config
from sadt.rewards import ForecastReward, RewardConfig
from search.config import search_config

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def commands(*argvs: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several commands at once: each is mostly Python importing torch, so two cores halve the wait."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda argv: command(*argv), argvs))


def fit_in_process(args: list[str], capsys) -> subprocess.CompletedProcess:
    """`python -m trainers.fit ARGS` (`test_a_bad_option_of_fit_is_one_line_not_a_usage_block` runs the real one)."""
    from trainers.fit import run

    return in_process(lambda: run(args), capsys)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, a short stderr naming every word."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    assert "usage:" not in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr


@pytest.mark.parametrize("field, value", [("lam", float("inf")), ("lam", float("nan")), ("guide_scale", float("inf")),
                                          ("hybrid_alpha", float("nan"))])
def test_every_float_setting_of_the_python_api_must_be_finite(field, value):
    with pytest.raises(ValueError, match=f"search `{field}` must be a finite number"):
        search_config(**{field: value})
    with pytest.raises(ValueError, match="reward `gamma` must be a finite number"):
        RewardConfig(gamma=float("inf"))


def test_a_non_finite_number_in_a_config_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("search:\n  lam: .inf\n")
    from search.run import RunConfig

    with pytest.raises(ConfigError, match=r"run.yaml: `search.lam` must be a finite number, got inf"):
        load_config(path, RunConfig)


@pytest.mark.parametrize("name, context", [
    ("flat", np.full(48, 5.0)),
    ("near flat", 5.0 + 1e-9 * np.sin(np.arange(48))),
    ("all negative", -3.0 - np.abs(np.sin(np.arange(48)))),
    ("1e12", 1e12 * (1 + 0.1 * np.sin(np.arange(48) * 2 * np.pi / 12))),
])
def test_the_reward_is_finite_for_flat_negative_and_huge_contexts(name, context):
    scaled = fit_scaler(context).transform(context)
    reward = ForecastReward(scaled, 12, RewardConfig())
    rng = np.random.default_rng(0)
    flat, wiggly = np.full(12, scaled[-1]), scaled[-12:] + 0.1 * rng.normal(size=12)
    out = reward(np.stack([flat, wiggly, scaled[-12:]]), np.ones(3, bool))
    assert np.isfinite(out.total).all(), name
    if name == "flat":  # the context's spectrum is zero: a flat forecast matches it, a wiggly one does not
        assert out.total[0] == pytest.approx(0.0) and out.total[1] < -1.0


def test_merge_refuses_to_overwrite_to_read_itself_and_to_store_a_window_twice(tmp_path):
    from data.buffer_cli import main as buffer_cli

    a, b, out = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "m.h5"
    for path, index in ((a, 0), (b, 1)):
        with BufferWriter(path, FINGERPRINT, META) as writer:
            writer.append(make_record(index))
    before = a.read_bytes()
    assert buffer_cli(["merge", str(a), str(b)]) == 2  # a.h5 exists: never replaced
    assert a.read_bytes() == before
    assert buffer_cli(["merge", str(out), str(out)]) == 2 and not out.exists()  # no self-reference
    assert buffer_cli(["merge", str(out), str(a), str(a)]) == 2 and not out.exists()
    with BufferWriter(tmp_path / "c.h5", FINGERPRINT, META) as writer:
        writer.append(make_record(0))  # the same window as a.h5
    assert buffer_cli(["merge", str(out), str(a), str(tmp_path / "c.h5")]) == 2 and not out.exists()
    assert buffer_cli(["merge", str(out), str(a), str(b)]) == 0
    assert read_buffer(out).n_prompts == 2


def test_merge_and_inspect_on_the_command_line_end_in_one_line(tmp_path):
    a = tmp_path / "a.h5"
    with BufferWriter(a, FINGERPRINT, META) as writer:
        writer.append(make_record(0))
    assert_one_line_error(command("data.buffer_cli", "merge", str(a), str(a)), str(a), "inputs")
    half = tmp_path / "half.h5"
    half.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    assert_one_line_error(command("data.buffer_cli", "inspect", str(half)), "half.h5")


def test_a_corrupt_head_is_one_line_naming_the_file(tmp_path):
    from sadt.head_io import HeadMismatchError, load_head

    shipped = ROOT / "checkpoints/heads/digit_ahead_lam15"
    meta = json.loads((shipped / "head.json").read_text())
    broken = tmp_path / "not_json"
    broken.mkdir()
    (broken / "head.json").write_text("{not json")
    (broken / "head.safetensors").write_bytes((shipped / "head.safetensors").read_bytes())
    with pytest.raises(HeadMismatchError, match=r"not_json/head.json: not valid JSON"):
        load_head(broken, meta["lm_fingerprint"])
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "head.json").write_text(json.dumps(meta))
    (truncated / "head.safetensors").write_bytes((shipped / "head.safetensors").read_bytes()[:1000])
    with pytest.raises(HeadMismatchError, match=r"truncated/head.safetensors: not a readable safetensors file"):
        load_head(truncated, meta["lm_fingerprint"])


def test_fit_ends_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fit = ["--data.buffers", f"[{missing}]", "--trainer.default_root_dir", str(run_dir)]
    missing_buffer, negative, infinite = (fit_in_process([*fit, "--model.lam", lam], capsys)
                                          for lam in ("2", "-1", "inf"))
    assert_one_line_error(missing_buffer, "missing.h5")
    assert_one_line_error(negative, "lam")
    assert_one_line_error(infinite, "model.lam")  # jsonargparse refuses it itself
    assert list(run_dir.iterdir()) == []  # no empty lightning_logs/version_N left behind


@pytest.mark.base_model
def test_a_series_longer_than_the_models_window_is_refused_before_any_forward(tmp_path, capsys, base_tokenizer):
    from search import demo

    series = tmp_path / "long.csv"
    series.write_text("value\n" + "\n".join(f"{100 + (i % 50)}" for i in range(5000)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"csv: {series}\nn_samples: 2\noutput_dir: {tmp_path / 'out'}\n")
    assert demo.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's window of 8192" in err and "forecast from the last" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_head_trained_at_another_lambda_warns_wherever_a_sampler_is_made():
    from toy_problem import ExactHead, Toy

    from sadt.value import HeadValue
    from search.sampler import make_sampler

    toy = Toy()
    head = HeadValue(ExactHead(toy, 2.0), trained_lam=2.0)  # what `task.value` makes of a loaded head
    for method, extra in (("maxent_ts", {"hybrid": "visits"}), ("twisted_smc", {})):
        config = search_config(method=method, lam=5.0, n_rollouts=4, batch_size=4, progress=False, **extra)
        with pytest.warns(UserWarning, match="trained at λ=2, the search runs at λ=5"):
            make_sampler(toy.lm, toy.problem, config, head)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same λ: no warning
        config = search_config(lam=2.0, n_rollouts=4, batch_size=4, progress=False, hybrid="visits")
        make_sampler(toy.lm, toy.problem, config, head)


@pytest.mark.parametrize("reward_fn, message", [
    (lambda s: 1 / 0, "reward_fn raised ZeroDivisionError"),
    (lambda s: ["high"] * len(s), "reward of sample 0 .* is 'high', not a number"),
    (lambda s: ["1.0", "2.0"], "is '1.0', not a number"),  # parseable strings are still a bug in the reward
    (lambda s: [0.5, float("nan")], "reward of sample 1 .* is nan"),
])
def test_a_failing_or_non_numeric_reward_names_the_sample(reward_fn, message):
    from sadt.rewards import RewardError, checked_rewards

    with pytest.raises(RewardError, match=message):
        checked_rewards(reward_fn, [[1, 2], [3]])


SCRIPTS = ["amortisation", "forward_kl_scan", "proposal_quality", "target_reference", "tilt_room"]


def script_in_process(script: str, args: list[str], capsys) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT.py ARGS` through the script's own `run_command(main)`
    (`test_a_benchmark_script_run_as_a_file_ends_bad_input_in_one_line` runs a file)."""
    from sadt.cli import run_command

    main = importlib.import_module(f"benchmarks.{script}").main
    return in_process(lambda: run_command(main, args), capsys)


def bad_lam_config(tmp_path: Path, script: str) -> Path:
    config = tmp_path / "bad.yaml"
    config.write_text({"forward_kl_scan": "lam: .inf\n", "proposal_quality": "lam: .inf\n",
                       "tilt_room": "lams: [5.0, .inf]\n"}.get(script, "real:\n  lam: .inf\n"))
    return config


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_ends_a_bad_config_in_one_line(tmp_path, monkeypatch, capsys, script):
    config = bad_lam_config(tmp_path, script)
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(script_in_process(script, ["--config", str(config)], capsys), "bad.yaml", "lam", "finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_a_benchmark_script_run_as_a_file_ends_bad_input_in_one_line(tmp_path):
    config = bad_lam_config(tmp_path, "amortisation")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "amortisation.py"), "--config", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "bad.yaml", "lam", "finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_harvest_and_demo_end_a_bad_config_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("search:\n  lam: .inf\n")
    harvest, demo, run, generator = commands(("search.harvest", "--config", str(config)),
                                             ("search.demo", "--config", str(config)),
                                             ("search.run", "--config", str(config), "--n-samples", "x"),
                                             ("data.generator", "--n", "0", "--plot", str(tmp_path / "g.png")))
    assert_one_line_error(harvest, "bad.yaml", "search.lam")
    assert_one_line_error(demo, "bad.yaml", "search.lam")
    assert_one_line_error(run, "--n-samples")
    assert_one_line_error(generator, "--n", ">= 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("script, args, words", [
    ("buffer_throughput", ["--trajectories", "0"], ["--trajectories", ">= 1"]),
    ("search_throughput", ["--batch", "zero"], ["--batch", "not an integer"]),
    ("mlx_vs_torch", ["--rollouts", "-1"], ["--rollouts", ">= 1"]),
    ("value_probe", ["--buffer", "missing.h5"], ["missing.h5", "no such buffer"]),
    ("value_overhead", ["--config", "missing.yaml", "--heads", "x"], ["missing.yaml", "no such config"]),
])
def test_argparse_benchmark_scripts_end_bad_arguments_in_one_line(tmp_path, monkeypatch, capsys, script, args, words):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(script_in_process(script, args, capsys), *words)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_option_of_fit_is_one_line_not_a_usage_block(tmp_path):
    proc = command("trainers.fit", "--config", str(ROOT / "configs/fit/soft_ahead.yaml"), "--model.lam", "abc",
                   "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(proc, "model.lam", "abc")
    assert not (tmp_path / "run").exists()


def test_a_fit_refuses_to_overwrite_a_head_before_anything_runs(tmp_path, capsys):
    """Issue 37.2: the documented fit once replaced the shipped head with a 1-epoch one."""
    head = tmp_path / "head"
    head.mkdir()
    (head / "head.json").write_text("{}")
    proc = fit_in_process(["--config", str(ROOT / "configs/fit/soft_ahead.yaml"), "--model.save_to", str(head),
                           "--trainer.default_root_dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(proc, str(head), "already holds a head", "--model.overwrite")
    assert (head / "head.json").read_text() == "{}" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, words", [
    (["--model.optimiser.lr", "0"], ["model.optimiser `lr`", "> 0"]),
    (["--model.optimiser.lr", "-0.001"], ["model.optimiser `lr`", "-0.001"]),
    (["--trainer.max_epochs", "0"], ["trainer.max_epochs", ">= 1"]),
    (["--model.tb", "1"], ["--model.tb", "is now `--model.losses.tb`"]),  # an option from before the groups
])
def test_a_fit_that_would_train_nothing_or_ascend_is_refused(tmp_path, capsys, args, words):
    """Issue 37.6: lr 0 or below trained (or ascended) and saved a head; max_epochs 0 saved nothing, silently."""
    proc = fit_in_process(["--config", str(ROOT / "configs/fit/soft_ahead.yaml"), *args,
                           "--model.save_to", str(tmp_path / "head"), "--trainer.default_root_dir",
                           str(tmp_path / "run")], capsys)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "head").exists() and not (tmp_path / "run").exists()
