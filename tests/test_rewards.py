import numpy as np
import pytest

from sadt.rewards import ForecastReward, RewardConfig, RewardError


@pytest.fixture
def context():
    t = np.arange(120)
    return 1.0 + 0.3 * np.sin(2 * np.pi * t / 12) + 0.05 * np.random.default_rng(0).normal(size=120)


def test_reward_is_task_minus_gamma_spectral(context):
    reward = ForecastReward(context, horizon=24, config=RewardConfig(gamma=2.0, invalid_penalty=5.0))
    good = context[-24:]
    flat = np.full(24, 1.0) + 1e-3 * np.arange(24)
    values = np.stack([good, flat, np.full(24, np.nan)])
    parts = reward(values, np.array([True, True, False]))
    np.testing.assert_allclose(parts.task, [0.0, 0.0, -5.0])
    np.testing.assert_allclose(parts.total, parts.task - 2.0 * parts.spectral)
    assert parts.spectral[0] < parts.spectral[1]  # the seasonal continuation matches the context's spectrum
    assert parts.spectral[2] == 0.0


def test_oracle_term_needs_truth_and_penalises_error(context):
    with pytest.raises(ValueError, match="truth"):
        ForecastReward(context, horizon=24, config=RewardConfig(oracle_weight=1.0))
    truth = context[-24:]
    reward = ForecastReward(context, 24, RewardConfig(gamma=0.0, oracle_weight=1.0), truth=truth)
    parts = reward(np.stack([truth, truth * 1.1]), np.array([True, True]))
    assert parts.total[0] == pytest.approx(0.0)
    assert parts.total[1] == pytest.approx(-0.1)


def test_the_record_constraint_costs_only_forecasts_whose_first_value_stays_at_or_below_the_contexts_max(context):
    reward = ForecastReward(context, 24, RewardConfig(gamma=0.0, invalid_penalty=5.0, record_penalty=2.0))
    above, at, below = (np.full(24, value) for value in (context.max() + 0.01, context.max(), context.max() - 0.5))
    later = below.copy()
    later[5] = context.max() + 1.0  # a record later in the forecast is not the event: it is decided by step 1
    parts = reward(np.stack([above, at, below, later, np.full(24, np.nan)]), np.array([True] * 4 + [False]))
    np.testing.assert_allclose(parts.total, [0.0, -2.0, -2.0, -2.0, -5.0])
    with pytest.raises(ValueError, match="record_penalty"):
        RewardConfig(record_penalty=-1.0)


def test_nan_in_a_valid_sample_is_an_error_naming_it(context):
    reward = ForecastReward(context, horizon=24)
    values = np.stack([context[-24:], context[-24:]])
    values[1, 3] = np.nan
    with pytest.raises(RewardError, match="sample 1"):
        reward(values, np.array([True, True]))


def test_partial_reward_runs_from_the_context_tail_to_the_finished_forecasts_reward(context):
    reward = ForecastReward(context, horizon=24, config=RewardConfig(gamma=2.0))
    forecast = 1.0 + 0.1 * np.cos(np.arange(24))
    finished = reward(forecast[None], np.array([True])).total[0]
    nothing, half, done, past = reward.partial([[], forecast[:12], forecast, np.r_[forecast, 5.0, 6.0]])
    assert done == pytest.approx(finished) and past == pytest.approx(finished)  # values past H are dropped
    assert nothing == pytest.approx(-2.0 * reward.spectral(context[-24:][None])[0])
    window = np.r_[context[-12:], forecast[:12]]
    assert half == pytest.approx(-2.0 * reward.spectral(window[None])[0])



def test_look_ahead_reward_completes_the_forecast_with_the_contexts_season(context):
    reward = ForecastReward(context, horizon=24, config=RewardConfig(gamma=2.0))
    forecast = 1.0 + 0.1 * np.cos(np.arange(24))
    finished = reward(forecast[None], np.array([True])).total[0]
    nothing, half, done = reward.ahead([[], forecast[:12], forecast])
    assert done == pytest.approx(finished)
    assert nothing == pytest.approx(-2.0 * reward.spectral(np.r_[context[-12:], context[-12:]][None])[0])  # period 12
    completed = np.r_[forecast[:12], forecast[:12]]  # the last 12 values repeat: the completed ones, a period back
    assert half == pytest.approx(-2.0 * reward.spectral(completed[None])[0])


@pytest.mark.parametrize("period", [3, 4, 7, 12])
def test_dominant_period_finds_a_seasons_length_under_trend_and_noise(period):
    from sadt.rewards import dominant_period

    t = np.arange(96)
    series = np.sin(2 * np.pi * t / period) + 0.02 * t + 0.1 * np.random.default_rng(period).normal(size=96)
    assert dominant_period(series) == period


def test_soft_look_ahead_is_the_log_mean_exp_of_the_reward_over_noisy_guesses_of_the_rest(context):
    reward = ForecastReward(context, horizon=24, config=RewardConfig(gamma=2.0))
    forecast = 1.0 + 0.1 * np.cos(np.arange(24))
    lam, samples = 5.0, 16
    soft = reward.soft_ahead([forecast[:10]], lam, samples=samples, seed=3)[0]
    # Reference by another route: the season's fill written out, the noise on the 14 filled steps only,
    # each guess scored as a finished forecast by the reward itself, the mean in float64 without logsumexp.
    fill = np.r_[forecast[:10], context[-2:], forecast[:10], context[-2:]]  # period 12: one season back
    sigma = np.std(context[12:] - context[:-12])
    noise = np.random.default_rng(3).standard_normal((samples, 24))
    guesses = fill + sigma * noise * (np.arange(24) >= 10)
    r = reward(guesses, np.ones(samples, dtype=bool)).total
    assert soft == pytest.approx(np.log(np.mean(np.exp(lam * r))) / lam, abs=1e-10)
    assert r.mean() < soft < r.max()  # Jensen: above the mean reward, below the best guess


def test_soft_look_ahead_is_the_look_ahead_reward_when_nothing_is_guessed(context):
    reward = ForecastReward(context, horizon=24, config=RewardConfig(gamma=2.0))
    forecast = 1.0 + 0.1 * np.cos(np.arange(24))
    partial = [[], forecast[:7], forecast]
    finished = reward.soft_ahead([forecast], lam=15.0)  # no step is guessed: V⁺(x) = r(x)
    np.testing.assert_allclose(finished, reward(forecast[None], np.array([True])).total, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reward.soft_ahead(partial, lam=15.0, noise_scale=0.0), reward.ahead(partial),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lam > 0"):
        reward.soft_ahead(partial, lam=0.0)
