"""The AutoARIMA peer: its season, its samples, and its row in the forecasting job."""

import csv

import numpy as np
import pytest

from sadt.metrics import crps
from search.peers import auto_arima_samples, seasonal_period


def test_seasonal_period_finds_the_calendar_period_or_none():
    t = np.arange(96)
    assert seasonal_period(10 + np.sin(2 * np.pi * t / 12) + 0.01 * t) == 12
    assert seasonal_period(10 + np.sin(2 * np.pi * t / 4)) == 4
    assert seasonal_period(np.random.default_rng(0).normal(size=96)) == 1  # white noise: no season
    assert seasonal_period(np.full(96, 3.0)) == 1  # flat: nothing to find


def test_auto_arima_samples_forecast_a_clean_seasonal_series_closely():
    t = np.arange(72)
    series = 50 + 10 * np.sin(2 * np.pi * t / 12) + 0.2 * t + np.random.default_rng(1).normal(0, 0.5, 72)
    context, truth = series[:60], series[60:]
    samples = auto_arima_samples(context, 12, 40, seasonal_period(context), seed=3)
    assert samples.shape == (40, 12) and np.isfinite(samples).all()
    assert crps(truth, samples) < 0.02  # ~1% of the level: it models trend and season
    np.testing.assert_array_equal(samples, auto_arima_samples(context, 12, 40, 12, seed=3))  # seeded


@pytest.mark.base_model
def test_the_job_prints_the_peer_row_scored_like_the_lm_rows(tmp_path, base_tokenizer):
    from search import demo

    series = tmp_path / "s.csv"
    series.write_text("value\n" + "\n".join(f"{50 + 5 * np.sin(i * np.pi / 6):.2f}" for i in range(60)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"csv: {series}\nmethods: [base, auto_arima]\nn_samples: 4\noutput_dir: {tmp_path / 'out'}\n")
    assert demo.main(["--config", str(config)]) == 0
    with (tmp_path / "out" / "results.csv").open() as f:
        base, peer = list(csv.DictReader(f))
    assert peer["method"] == "AutoARIMA (peer)" and int(peer["samples"]) == 4 and int(peer["nfe_tokens"]) == 0
    assert float(peer["crps"]) < float(base["crps"])  # a clean sine: ARIMA is the better forecaster here
    assert np.isfinite(float(peer["reward"]))
