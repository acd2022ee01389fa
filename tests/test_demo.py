"""End to end with the real base model: the README's demo on a small budget."""

import csv

import pytest

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
    assert "unknown series 'NotASeries'" in capsys.readouterr().out
