"""End to end with the real base model: the README's demo on a small budget."""

import csv
from pathlib import Path

import pytest
import torch

from search import demo


@pytest.mark.base_model
def test_demo_prints_the_table_and_saves_both_plots(tmp_path, capsys, base_tokenizer):
    config = tmp_path / "demo.yaml"
    config.write_text(
        f"series: [Wooly]\nn_samples: 4\nbatch_size: 4\noutput_dir: {tmp_path / 'out'}\n"
        "search:\n  n_rollouts: 8\n  batch_size: 8\n  lam: 5.0\n"
    )
    assert demo.main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "Wooly" in printed and "LLMTime: GPT-3" in printed
    assert (tmp_path / "out" / "Wooly_fan.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "Wooly_psd.png").stat().st_size > 10_000
    with (tmp_path / "out" / "results.csv").open() as f:
        base, tree = list(csv.DictReader(f))
    assert base["method"] == "base sampling" and tree["method"].startswith("maxent_ts@8")
    for row in (base, tree):
        assert int(row["samples"]) == 4  # the grammar makes every forecast parse
        assert 0 < float(row["crps"]) < 2 and int(row["nfe_tokens"]) > 4 * 24 * 2


def test_demo_rejects_a_bad_config_before_loading_the_model(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text("series: [NotASeries]\n")
    assert demo.main(["--config", str(config)]) == 2
    assert "unknown series 'NotASeries'" in capsys.readouterr().err


def write_head(directory, fingerprint: str) -> None:
    """An untrained (zero-init) head with the base model's shapes: Q_φ = 0, so P_F = p."""
    from sadt.codec import CodecConfig
    from sadt.config import to_dict
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead
    from sadt.head_card import HeadCard
    from sadt.head_io import save_head

    head = MLPFlowHead(torch.randn(12, 576), FlowHeadConfig(hidden=8, layers=1))
    save_head(head, directory, HeadCard.for_head(head, lm_fingerprint=fingerprint, lam=5.0,
                                                 codec=to_dict(CodecConfig())))


@pytest.mark.base_model
def test_head_rows_run_and_a_foreign_head_is_refused(tmp_path, capsys, base_tokenizer):
    from sadt.lm.base_model import lm_fingerprint

    write_head(tmp_path / "head", lm_fingerprint())
    series = tmp_path / "short.csv"  # 30 steps: a 6-step horizon keeps the test quick
    series.write_text("value\n" + "\n".join(f"{50 + 5 * (i % 7):.1f}" for i in range(30)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"csv: {series}\nmethods: [twisted_smc, hybrid]\nn_samples: 4\nhead: {tmp_path / 'head'}\n"
        f"output_dir: {tmp_path / 'out'}\nsearch:\n  n_rollouts: 8\n  batch_size: 8\n  lam: 5.0\n"
        "variants:\n  hybrid: {hybrid: visits, n_rollouts: 6}\n"
    )
    assert demo.main(["--config", str(config)]) == 0
    with (tmp_path / "out" / "results.csv").open() as f:
        smc, hybrid = list(csv.DictReader(f))
    assert smc["method"].startswith("twisted_smc@8") and hybrid["method"].startswith("hybrid@6")
    assert int(smc["samples"]) == int(hybrid["samples"]) == 4
    # 8 particles cost what 8 rollouts of 6 values (>= 2 tokens each, the last one never fed) cost.
    assert int(smc["nfe_tokens"]) > 8 * (6 * 2 - 1)

    write_head(tmp_path / "head", "0123456789abcdef")
    assert demo.main(["--config", str(config)]) == 2
    assert "head trained for LM '0123456789abcdef'" in capsys.readouterr().err


@pytest.mark.base_model
def test_the_demo_config_names_a_shipped_head_for_this_base_model(base_tokenizer):
    from sadt.config import load_config, to_dict
    from sadt.head_io import load_search_head
    from sadt.lm.base_model import lm_fingerprint
    from search.run import RunConfig

    root = Path(__file__).parents[1]
    config = load_config(root / "configs/demo/airpassengers.yaml", RunConfig)
    assert config.methods[2] == "twisted_smc" and config.search_config("twisted_smc").n_rollouts == 200  # recommended
    assert config.search_config("hybrid").hybrid == "visits" and config.search_config("hybrid").defensive == 0.5
    head = load_search_head(root / config.head, lm_fingerprint(), to_dict(config.codec))  # raises on a mismatch
    assert head.lm is None and head.card.lam == config.search.lam


@pytest.mark.base_model
def test_ctrl_c_marks_the_interrupted_row_and_stops_the_job(tmp_path, capsys, base_tokenizer, monkeypatch):
    from conftest import interrupt_reward_at

    interrupt_reward_at(monkeypatch, 3)  # 1: base sampling, 2: the search's first batch, 3: Ctrl-C
    series = tmp_path / "short.csv"
    series.write_text("value\n" + "\n".join(f"{50 + 5 * (i % 7):.1f}" for i in range(30)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"csv: {series}\nmethods: [base, maxent_ts, dts]\nn_samples: 4\noutput_dir: {tmp_path / 'out'}\n"
                      "search:\n  n_rollouts: 8\n  batch_size: 4\n  lam: 5.0\n  defensive: 0.0\n")
    # defensive: 0 so that every descent of the second batch reaches a new leaf and calls the reward; the prior
    # of this regular series is so peaked that draws from it (half the descents by default) revisit known
    # terminals, which cost no reward call.
    assert demo.main(["--config", str(config)]) == 130  # a cut-short job does not report success
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["base sampling", "maxent_ts@8 λ=5 (interrupted at 4 rollouts)"]  # no dts
    assert [r["interrupted"] for r in rows] == ["False", "True"]
    assert "interrupted: stopped after" in capsys.readouterr().err


@pytest.mark.base_model
def test_horizon_forecasts_past_the_end_of_a_csv_unscored(tmp_path, capsys, base_tokenizer):
    """`horizon: N` uses the whole CSV as context and forecasts N steps after it: no truth, so no scores,
    and the plots show the forecasts after the last value."""
    series = tmp_path / "sales.csv"
    series.write_text("value\n" + "\n".join(f"{50 + 5 * (i % 6):.1f}" for i in range(36)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"csv: {series}\nhorizon: 6\nmethods: [base, auto_arima]\nn_samples: 3\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    assert demo.main(["--config", str(config)]) == 0
    assert "past the end" in capsys.readouterr().out
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["base sampling", "AutoARIMA (peer)"]
    assert all(r["crps"] == "nan" and int(r["samples"]) == 3 for r in rows)
    assert rows[0]["nfe_tokens"] != "0"  # the LM wrote 6 values after all 36 of the context
    assert (tmp_path / "out" / "sales:value_fan.png").stat().st_size > 10_000
