"""Issue 37's hostile inputs to the jobs (items 5, 8-14): every bad setting of a run is one line before the model
loads; finished rows survive a later failure or Ctrl-C; metrics and plots that cannot be computed are warnings;
searches that cannot fit in the window or in memory are refused before the first forward."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from in_process import in_process

from data.series import Series
from sadt.grammar import TextGrammar
from sadt.lm.backend import TorchLM
from sadt.lm.tiny import tiny_llama
from sadt.rewards import RewardError, checked_rewards
from search import report, run
from search.config import search_config
from search.sampler import check_resources

ROOT = Path(__file__).resolve().parents[1]
SERIES = "value\n" + "\n".join(f"{50 + 5 * (i % 7):.1f}" for i in range(30)) + "\n"


def run_config(tmp_path: Path, extra: str, csv_text: str = SERIES) -> Path:
    series = tmp_path / "s.csv"
    series.write_text(csv_text)
    config = tmp_path / "run.yaml"
    config.write_text(f"csv: {series}\nmethods: [base, maxent_ts]\nn_samples: 2\noutput_dir: {tmp_path / 'out'}\n"
                      + extra)
    return config


@pytest.mark.parametrize("extra, words", [
    ("top_k: 0\n", ["`top_k`", ">= 1"]),
    ("seed: -1\n", ["`seed`", ">= 0"]),
    ("temperature: -1\n", ["`temperature`", "> 0"]),
    ("device: cuda:99\n", ["`device`", "cuda:99"]),
    ("dtype: banana\n", ["`dtype`", "banana"]),
    ("horizon: 2\n", ["`horizon`", ">= 4"]),
    ("reward:\n  gamma: 1.0e+308\n", ["`gamma`", "1e+06"]),
    ("n_samples: 0\n", ["`n_samples`"]),  # not the search block's: the key the user wrote
    ("methods: [v1]\nvariants:\n  v1: {n_rollouts: -3}\n", ["variants.v1", "n_rollouts"]),
])
def test_every_bad_run_setting_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, extra, words):
    monkeypatch.setattr(run, "load_base_lm", lambda **kw: pytest.fail("the model loaded"))
    config = run_config(tmp_path, extra)
    assert run.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.yaml" in err and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_bad_files_and_folders_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "load_base_lm", lambda **kw: pytest.fail("the model loaded"))
    cases = []
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"n_samples: 2\n# caf\xe9\n")
    cases.append((latin1, ["latin1.yaml", "not UTF-8"]))
    config = run_config(tmp_path, "")
    blocked = config.with_name("blocked.yaml")
    blocked.write_text(config.read_text().replace(str(tmp_path / "out"), str(tmp_path / "s.csv" / "out")))
    cases.append((blocked, ["output_dir", "s.csv is a file"]))
    (tmp_path / "short").mkdir()
    short = run_config(tmp_path / "short", "", "value\n" + "\n".join(map(str, range(12))) + "\n")
    cases.append((short, ["held-out last 20% is 3 steps", "horizon: 4"]))
    (tmp_path / "latin1csv").mkdir()
    latin1_csv = run_config(tmp_path / "latin1csv", "", "value\n" + "\n".join(map(str, range(30))) + "\n")
    (tmp_path / "latin1csv" / "s.csv").write_bytes(b"caf\xe9\n" + b"1\n" * 30)
    cases.append((latin1_csv, ["s.csv", "not UTF-8"]))
    markup = tmp_path / "a[" / "x].yaml"  # read as rich markup, "[/x]" once ended in a MarkupError
    cases.append((markup, ["a[/x].yaml"]))
    for path, words in cases:
        assert run.main(["--config", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
    assert (tmp_path / "s.csv").read_text() == SERIES


def test_metrics_that_cannot_be_computed_are_marked_and_warned(capsys):
    zeros = Series(name="flat", values=np.zeros(40), horizon=8)
    scores = report.scores(zeros, np.ones((3, 8)), segment=24)
    assert scores == {"crps": report.UNDEFINED, "scaled_mae": report.UNDEFINED, "spec_w1": report.UNDEFINED}
    assert "warning: flat: crps is undefined (the truth is all zeros" in capsys.readouterr().err
    assert report.score_cell(scores["crps"]) == "undefined" and report.score_cell(float("nan")) == "–"


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_the_end_of_the_job(tmp_path, capsys):
    huge = Series(name="huge", values=np.where(np.arange(40) % 2, 1e300, -1e300), horizon=8)
    report.draw_plots(tmp_path, huge, {"base": np.full((3, 8), 1e300)}, segment=24)
    err = capsys.readouterr().err
    assert "warning: huge_" in err and "not drawn" in err


@pytest.mark.base_model
def test_ctrl_c_in_the_second_series_keeps_the_first_series_rows(tmp_path, capsys, base_tokenizer, monkeypatch):
    from conftest import interrupt_reward_at

    interrupt_reward_at(monkeypatch, 2)  # 1: the first series' base sampling, 2: the second's: Ctrl-C
    config = tmp_path / "run.yaml"
    config.write_text(f"series: [Wooly, AusBeer]\nmethods: [base]\nn_samples: 2\nhorizon: 4\n"  # the interruption is
                      f"output_dir: {tmp_path / 'out'}\n")  # tested, not the forecast: 4 steps past the end
    assert run.main(["--config", str(config)]) == 130  # not 0: the job was cut short
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["series"] for r in rows] == ["Wooly"]
    assert "interrupted: stopped after Wooly" in capsys.readouterr().err


def test_a_long_back_test_is_refused_from_its_token_count_before_the_reward_is_built(base_tokenizer):
    from sadt.codec import Codec
    from search.forecast_task import ContextTooLong, ForecastTask

    codec = Codec(base_tokenizer)
    values = 100.0 + np.arange(30_000) % 50
    with pytest.raises(ContextTooLong, match=r"forecast from the last \d{3,4} rows or fewer"):
        ForecastTask.build(codec, values[:24_000], 6_000, window=8192, back_test=True)
    with pytest.raises(ContextTooLong, match=r"`horizon` must be at most \d+ steps"):
        ForecastTask.build(codec, values[:100], 6_000, window=8192)


def tiny_lm() -> TorchLM:
    return TorchLM(tiny_llama(vocab_size=64).to(torch.float32))


def test_a_search_that_cannot_fit_in_memory_or_the_window_is_refused_naming_the_setting():
    lm, grammar = tiny_lm(), TextGrammar(n_actions=64, max_tokens=24)
    per_row = lm.kv_bytes_per_position * (100 + 24)
    assert per_row == 2 * 2 * 2 * 8 * 4 * 124  # layers · KV heads · head dim · float32 bytes · positions
    huge = 10**12 // per_row  # particles whose caches need ~1 TB
    with pytest.raises(ValueError, match=rf"`n_rollouts \(SMC particles\)` = {huge} needs about .* GiB"):
        check_resources(lm, 100, grammar, 64, search_config(method="smc", n_rollouts=huge, lam=1.0))
    check_resources(lm, 100, grammar, 64, search_config(method="maxent_ts", n_rollouts=huge, batch_size=8, lam=1.0))
    with pytest.raises(ValueError, match="`top_k` = 65 exceeds the task's 64 actions"):
        check_resources(lm, 100, grammar, 64, search_config(top_k=65, lam=1.0))
    with pytest.raises(ValueError, match="prompt of 1010 tokens plus an answer of up to 24 exceeds .* 1024"):
        check_resources(lm, 1010, grammar, 64, search_config(lam=1.0))


@pytest.mark.parametrize("reward, message", [
    (lambda texts: ["1.0"] * len(texts), "is '1.0', not a number"),
    (lambda texts: [1e308] * len(texts), "beyond ±1e\\+12"),
])
def test_a_text_reward_of_strings_or_overflowing_size_is_refused(reward, message):
    from search.text_task import TextTask

    class Tokenizer:
        eos_token_id = 0

        def __len__(self):
            return 64

        def encode(self, text, add_special_tokens=False):
            return [1] if text == "\n" else [5, 6]

        def decode(self, ids):
            return " ".join(map(str, ids))

    task = TextTask.build(Tokenizer(), "prompt", reward, max_tokens=4)
    with pytest.raises(RewardError, match=message):
        task.reward_fn([[3, 4], [5]])
    with pytest.raises(RewardError, match=message):
        checked_rewards(task.reward_fn, [[3, 4]])


@pytest.mark.parametrize("extra, words", [
    ("lam: 0\n", ["`lam`", "> 0"]),
    ("methods: [flow]\n", ["'flow' reads a flow head"]),
    ("context_length: 1\n", ["`context_length`", ">= 6"]),
])
def test_the_caption_job_refuses_bad_settings_before_the_model_loads(tmp_path, monkeypatch, capsys, extra, words):
    """Through the command's own entry point in this process (a fresh process per case cost ~4 s of imports);
    loading the model fails the test."""
    import sadt.lm.base_model
    from sadt.cli import run_command
    from search.caption import main

    def no_model(*args, **kwargs):
        raise AssertionError("the caption job loaded the model before refusing its settings")

    monkeypatch.setattr(sadt.lm.base_model, "load_base_lm", no_model)
    config = tmp_path / "caption.yaml"
    config.write_text(extra)
    proc = in_process(lambda: run_command(main, ["--config", str(config)]), capsys)
    assert proc.returncode == 2 and all(w in proc.stderr for w in words), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def fit_buffer(path: Path, meta: dict, n_records: int) -> Path:
    from buffer_records import make_record

    from data.buffer import BufferWriter
    from sadt.lm.base_model import lm_fingerprint

    with BufferWriter(path, lm_fingerprint(), meta) as writer:
        for i in range(n_records):
            writer.append(make_record(i))
    return path


@pytest.mark.base_model
def test_fit_refuses_data_it_cannot_train_on_before_the_run_directory_exists(tmp_path, base_tokenizer):
    from sadt.codec import Codec
    from sadt.config import to_dict
    from search.harvest import HarvestConfig
    from trainers import fit

    harvest_meta = {"lam": 2.0, "gamma": 1.0, "config": to_dict(HarvestConfig(horizon=4)),
                    "action_token_ids": Codec(base_tokenizer).action_token_ids}
    empty = fit_buffer(tmp_path / "empty.h5", harvest_meta, 0)
    tree_only = fit_buffer(tmp_path / "tree.h5", harvest_meta, 3)  # sources 0-2: no draws from p
    text = fit_buffer(tmp_path / "text.h5", {"lam": 1.0, "task": "text", "n_actions": 49_152}, 3)
    cases = [
        ([empty], [], "no trajectories"),
        ([tree_only], ["--model.losses.forward_kl", "1.0"], "`losses.forward_kl` needs draws from p"),
        ([text], [], "a text-task buffer"),
        ([tree_only], ["--data.batch_size", "0"], "`batch_size` must be >= 1"),
    ]
    for i, (buffers, extra, message) in enumerate(cases):
        root = tmp_path / f"run{i}"
        root.mkdir()
        args = ["--data.buffers", f"[{','.join(map(str, buffers))}]", "--model.save_to", str(root / "head"),
                "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1", *extra]
        with pytest.raises(ValueError, match=message):
            fit.main(args)
        assert list(root.iterdir()) == [], message  # no lightning_logs/version_N left behind


@pytest.mark.base_model
def test_a_run_whose_particles_exceed_memory_is_refused_before_any_forward(tmp_path, capsys, base_tokenizer,
                                                                          monkeypatch):
    import search.sampler

    monkeypatch.setattr(search.sampler, "device_memory", lambda device: 2**30)  # a 1 GiB machine
    config = run_config(tmp_path, "search:\n  n_rollouts: 400\n").read_text().replace("[base, maxent_ts]", "[smc]")
    (tmp_path / "smc.yaml").write_text(config)
    assert run.main(["--config", str(tmp_path / "smc.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`n_rollouts (SMC particles)` = 400 needs about" in err and "use at most" in err, err
    assert not (tmp_path / "out").exists()


def test_too_few_digits_for_the_context_is_refused_naming_max_digits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "load_base_lm", lambda **kw: pytest.fail("the model loaded"))
    config = run_config(tmp_path, "codec:\n  max_digits: 2\n")
    assert run.main(["--config", str(config)]) == 2  # every forecast would be capped below the context's level
    err = capsys.readouterr().err
    assert "`max_digits` = 2" in err and ">= precision + 1 = 4" in err and err.count("\n") == 1, err
