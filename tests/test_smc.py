"""SMC and twisted SMC against the exact toy: log Ẑ is exact with an exact twist, unbiased otherwise."""

import numpy as np
import pytest
import torch
from toy_problem import PROMPT, ExactHead, Toy, total_variation

from sadt.importance import effective_sample_size
from search.config import search_config
from search.sampler import make_sampler
from search.smc import SMC, systematic_resample
from search.tree_search import TreeSearch

LAM = 2.0


@pytest.fixture(scope="module")
def toy():
    return Toy()


class ZeroHead:
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros(hidden.shape[0], 3, dtype=torch.float64)


def run(toy, method, n, head=None, seed=0, **kwargs):
    config = search_config(method=method, lam=LAM, n_rollouts=n, n_samples=n, seed=seed, progress=False, **kwargs)
    return SMC(toy.lm, toy.problem, config, value_head=head).run()


def empirical(toy, samples):
    counts = np.zeros(len(toy.sequences))
    for s in samples:
        counts[toy.index(s)] += 1
    return counts / counts.sum()


def test_exact_twist_gives_exact_log_z_and_equal_weights(toy):
    target, exact_root = toy.target(LAM)
    result = run(toy, "twisted_smc", 500, ExactHead(toy, LAM))
    # Every incremental weight is exp(λ (V(s·a) − Q(s,a))) = 1: the estimate is exact, not just unbiased.
    assert abs(result.root_value - exact_root) < 1e-8
    assert result.final_ess == pytest.approx(500)
    assert result.resamples == 0
    prior = run(toy, "smc", 500, ess_threshold=0.0)  # no resampling: the particles are prior draws
    # 500 draws over 243 outcomes: TV is mostly sampling noise. Measured: twisted 0.34, prior particles 0.43.
    assert total_variation(empirical(toy, result.particles), target) < total_variation(
        empirical(toy, prior.particles), target
    )


def test_plain_smc_log_z_converges(toy):
    _, exact_root = toy.target(LAM)
    errors = [run(toy, "smc", 1000, seed=s).root_value - exact_root for s in range(3)]
    # Measured over 5 seeds: mean error 0.002, spread 0.007 at 1000 particles (0.010 ± 0.021 at 100).
    assert abs(np.mean(errors)) < 0.02


def test_resampling_keeps_z_unbiased(toy):
    """A wrong twist with resampling at every step: E[Ẑ] = Z still holds."""
    _, exact_root = toy.target(LAM)
    head = ExactHead(toy, LAM, noise=0.3)  # wrong but a function of the state: the theorem's setting
    results = [run(toy, "twisted_smc", 100, head, seed=s, ess_threshold=1.0) for s in range(20)]
    assert all(r.resamples >= 4 for r in results)  # 5 steps: resampled at each of the first 4 at least
    ratios = np.exp(LAM * (np.array([r.root_value for r in results]) - exact_root))  # Ẑ / Z
    assert abs(ratios.mean() - 1) < 3 * ratios.std(ddof=1) / np.sqrt(len(ratios)) + 0.01


def test_zero_twist_is_plain_smc_for_the_same_seed(toy):
    plain, twisted = run(toy, "smc", 200, seed=1), run(toy, "twisted_smc", 200, ZeroHead(), seed=1)
    assert plain.particles == twisted.particles
    assert plain.root_value == pytest.approx(twisted.root_value, abs=1e-12)


def test_smc_costs_what_the_same_number_of_rollouts_costs(toy):
    smc = run(toy, "smc", 64)
    config = search_config(method="ancestral", lam=LAM, n_rollouts=64, batch_size=64, progress=False)
    tree = TreeSearch(toy.lm, toy.problem, config).run()
    assert smc.nfe_tokens == tree.nfe_tokens == len(PROMPT) + 64 * (toy.length - 1)


def test_make_sampler_dispatches_and_checks_the_head(toy):
    config = search_config(method="twisted_smc", lam=LAM, n_rollouts=8, progress=False)
    with pytest.raises(ValueError, match="value_head"):
        make_sampler(toy.lm, toy.problem, config)
    assert isinstance(make_sampler(toy.lm, toy.problem, config, ZeroHead()), SMC)
    with pytest.raises(ValueError, match="particle sampler"):
        TreeSearch(toy.lm, toy.problem, search_config(method="smc"))
    with pytest.raises(ValueError, match="ess_threshold"):
        search_config(method="smc", ess_threshold=1.5)


def test_resampling_helpers():
    log_w = np.log(np.array([1.0, 1.0, 2.0, 0.0 + 1e-300]))
    assert effective_sample_size(np.zeros(7)) == pytest.approx(7)
    assert effective_sample_size(log_w) == pytest.approx(16 / 6)
    w = np.array([0.05, 0.15, 0.3, 0.5])
    expected = len(w) * w  # systematic resampling copies particle i floor(N w_i) or ceil(N w_i) times
    for seed in range(50):
        counts = np.bincount(systematic_resample(np.log(w), np.random.default_rng(seed)), minlength=len(w))
        assert counts.sum() == len(w)
        assert np.all((counts >= np.floor(expected)) & (counts <= np.ceil(expected)))
