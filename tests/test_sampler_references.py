"""A window's log Z reference from K twisted-SMC runs under a head no compared sampler reads
(`benchmarks.evaluation.references`): exact under an exact twist, unbiased in Z under an inexact one, resumed run by
run, and refused where it would share a compared sampler's head."""

import numpy as np
import pytest
from toy_problem import ExactHead, Toy, ToyTask

from benchmarks.evaluation.references import ReferenceSpec, smc_log_z_hats
from benchmarks.evaluation.scoring import Reference
from benchmarks.samplers import SamplersConfig, SamplerSpec

LAM = 3.0


@pytest.fixture(scope="module")
def toy():
    return Toy(length=4)


def test_an_exact_twist_gives_every_run_log_z(toy, tmp_path):
    """Twisted by the exact soft values, each run's proposal is π*: every Ẑ_k = Z, so the interval closes on it."""
    _, root = toy.target(LAM)
    spec = ReferenceSpec(draws="smc", head="exact", runs=3, particles=16)
    log_z_hats = smc_log_z_hats(tmp_path / "ref.npy", toy.lm, ToyTask(toy), LAM, spec, ExactHead(toy, LAM))
    reference = Reference.from_log_weights(log_z_hats, np.random.default_rng(0))
    np.testing.assert_allclose(log_z_hats, LAM * root, atol=1e-5)
    assert reference.log_z == pytest.approx(LAM * root, abs=1e-5) and reference.n_draws == 3
    assert reference.high - reference.low < 1e-5


def test_the_mean_of_the_runs_z_hats_is_unbiased_for_z_under_an_inexact_twist(toy, tmp_path):
    """A noisy head: each log Ẑ_k spreads and sits low on average (Jensen), yet the runs' mean Ẑ is Z."""
    _, root = toy.target(LAM)
    spec = ReferenceSpec(draws="smc", head="noisy", runs=60, particles=6)
    head = ExactHead(toy, LAM, noise=0.6, seed=1)
    log_z_hats = smc_log_z_hats(tmp_path / "ref.npy", toy.lm, ToyTask(toy), LAM, spec, head)
    ratios = np.exp(log_z_hats - LAM * root)  # Ẑ_k / Z
    assert np.ptp(log_z_hats) > 0.1  # the twist is inexact: the runs disagree
    assert abs(ratios.mean() - 1) < 3 * ratios.std(ddof=1) / np.sqrt(ratios.size) + 0.01


def test_a_stopped_reference_resumes_at_its_next_run(toy, tmp_path):
    head = ExactHead(toy, LAM, noise=0.6, seed=1)
    path = tmp_path / "window.reference_smc_lam3.npy"
    first = smc_log_z_hats(path, toy.lm, ToyTask(toy), LAM, ReferenceSpec("smc", "noisy", 2, 6), head)
    calls = head.calls
    resumed = smc_log_z_hats(path, toy.lm, ToyTask(toy), LAM, ReferenceSpec("smc", "noisy", 4, 6), head)
    whole = smc_log_z_hats(tmp_path / "fresh.npy", toy.lm, ToyTask(toy), LAM, ReferenceSpec("smc", "noisy", 4, 6),
                           head)
    np.testing.assert_array_equal(resumed[:2], first)  # read back, not rerun
    np.testing.assert_allclose(resumed, whole)  # run k has its own seed whether or not the run stopped
    assert len(set(np.round(whole, 9))) == 4  # four seeds, four estimates
    assert smc_log_z_hats(path, toy.lm, ToyTask(toy), LAM, ReferenceSpec("smc", "noisy", 4, 6), head).size == 4
    assert head.calls > calls and not list(tmp_path.glob("*.partial.npy"))


def test_a_reference_sharing_a_compared_head_or_missing_its_runs_is_refused():
    readers = {"iid P_F": SamplerSpec(draws="policy", head=True)}
    with pytest.raises(ValueError, match="reference must come from no compared sampler"):
        SamplersConfig(samplers=readers, head="checkpoints/heads/soft_ahead_lam15",
                       reference=ReferenceSpec("smc", "checkpoints/heads/soft_ahead_lam15", 4, 200))
    assert SamplersConfig(samplers=readers, head="checkpoints/heads/soft_ahead_lam15",
                          reference=ReferenceSpec("smc", "checkpoints/heads/digit_ahead_lam15", 4, 200))
    with pytest.raises(ValueError, match="`runs` >= 2"):
        ReferenceSpec("smc", "digit", runs=1, particles=200)
    with pytest.raises(ValueError, match="takes no `head`"):
        ReferenceSpec("policy", "digit")
    with pytest.raises(ValueError, match="must be one of"):
        ReferenceSpec("tree")
