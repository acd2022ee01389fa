import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from sadt.spectral import SpectralConfig, SpectralPenalty, psd, spec_w1, w1_between_psds


def test_white_noise_psd_is_flat():
    rng = np.random.default_rng(0)
    _, power = psd(rng.normal(size=(2000, 64)), nperseg=16)
    mean = power.mean(axis=0)
    # One-sided Welch PSD of unit white noise is 2, except the Nyquist bin (not doubled) and the
    # bin next to DC, which loses power to the per-segment mean removal seen through the Hann window.
    np.testing.assert_allclose(mean[1:-1], 2.0, rtol=0.05)
    np.testing.assert_allclose(mean[-1], 1.0, rtol=0.1)


def test_sine_peaks_at_its_frequency():
    t = np.arange(96)
    freqs, power = psd(np.sin(2 * np.pi * 0.25 * t), nperseg=32)
    assert freqs[np.argmax(power)] == pytest.approx(0.25)
    assert 0.0 not in freqs  # the zero bin is dropped


def test_identical_spectra_give_zero_penalty_and_different_ones_do_not():
    rng = np.random.default_rng(1)
    context = rng.normal(size=200)
    penalty = SpectralPenalty(context, horizon=24, config=SpectralConfig(segment=24, context_stride=200))
    window = context[:24]  # stride 200 keeps one window: E[S_c] is exactly this window's PSD
    assert penalty(window[None])[0] == pytest.approx(0.0, abs=1e-12)
    assert penalty(3 * window[None])[0] == pytest.approx(np.log(9) * (0.5 - 1 / 24), rel=1e-9)


def test_constant_forecast_is_floored_not_infinite():
    rng = np.random.default_rng(2)
    penalty = SpectralPenalty(rng.normal(size=100), horizon=20)
    value = penalty(np.ones((1, 20)))[0]
    assert np.isfinite(value) and value > 0


def test_w1_matches_scipy_and_moves_with_a_shift():
    freqs = np.arange(1, 9) / 16
    rng = np.random.default_rng(3)
    p, q = rng.random(8), rng.random(8)
    expected = wasserstein_distance(freqs, freqs, u_weights=p, v_weights=q)
    assert w1_between_psds(p, q, freqs) == pytest.approx(expected, rel=1e-12)
    delta_a, delta_b = np.eye(8)[1], np.eye(8)[5]
    assert w1_between_psds(delta_a, delta_b, freqs) == pytest.approx(4 / 16)


def test_spec_w1_is_zero_for_the_truth_and_scale_free():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=30)
    assert spec_w1(np.stack([truth, 5 * truth + 2]), truth)[0] == pytest.approx(0.0, abs=1e-12)
    assert spec_w1(np.stack([truth, 5 * truth + 2]), truth)[1] == pytest.approx(0.0, abs=1e-12)
