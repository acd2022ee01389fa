"""Balance-heuristic weights of MaxEnt-TS's draws (`search.balance`) on the enumerable toy: every iteration's
rebuilt law against enumeration, the prefix property of the past-only mixture, the bias of the full-history one."""

import numpy as np
import pytest
from toy_problem import ExactHead, Toy, mixture_distribution, policy_step_log_probs

from sadt.importance import log_mean_exp
from search.balance import balance_log_weights, iteration_log_laws
from search.config import search_config
from search.tree_search import TreeSearch


@pytest.fixture(scope="module")
def toy():
    return Toy()


def fresh(toy, lam, seed=0, batch=4, n=400, head=None, **settings) -> TreeSearch:
    if settings.get("method", "maxent_ts") == "maxent_ts":
        settings.setdefault("selection_shrink", 0.0)  # the law the balance heuristic rebuilds reads no visit counts
    config = search_config(lam=lam, n_rollouts=n, batch_size=batch, seed=seed, progress=False, **settings)
    return TreeSearch(toy.lm, toy.problem, config, value_head=head)


@pytest.mark.parametrize("settings", [
    {"defensive": 0.5, "defensive_adapt": False}, {"defensive": 0.5, "defensive_adapt": True},
    {"defensive": 0.0, "selection_scale": 0.5},
])
def test_every_iterations_law_is_rebuilt_exactly_at_every_draw(toy, settings):
    """log q_j(x_i) for every iteration j and every draw i, earlier or later, equals the enumerated law of the
    search as iteration j began; at j = j(i) it is the draw's own weight's denominator."""
    lam, batch = 4.0, 4
    completion = policy_step_log_probs(toy, lam)
    tree = fresh(toy, lam, batch=batch, **settings)
    enumerated = []
    for _ in range(7):
        enumerated.append(mixture_distribution(tree, toy, completion))
        tree.iterate(batch)
    log_q, batches, log_target = iteration_log_laws(tree)
    x = np.array([toy.index(tree.tree.actions_to(int(t))) for t in tree.draw_terminals])
    np.testing.assert_allclose(log_q, np.log(np.stack(enumerated))[:, x], atol=1e-8)
    np.testing.assert_allclose(log_target, toy.log_p[x] + lam * toy.table[x], atol=1e-8)
    own = np.repeat(np.arange(batches.size), batches)
    np.testing.assert_allclose(log_target - log_q[own, np.arange(x.size)], tree.draw_log_weights, atol=1e-8)
    mixture = np.stack(enumerated).mean(axis=0)  # equal batches: ψ = the mean of the laws
    np.testing.assert_allclose(balance_log_weights(tree, laws="all"),
                               toy.log_p[x] + lam * toy.table[x] - np.log(mixture[x]), atol=1e-8)


def test_past_only_weights_of_the_first_draws_do_not_change_as_the_search_goes_on(toy):
    """A draw's past-only weight reads the laws up to its own iteration: the first 16 draws weigh the same in a
    search stopped there and in one run on; the full-history mixture reweighs them; a cut mid-iteration is refused."""
    long, short = fresh(toy, 10.0, seed=3), fresh(toy, 10.0, seed=3)
    long.run(48), short.run(16)
    np.testing.assert_allclose(balance_log_weights(long)[:16], balance_log_weights(short), atol=1e-10)
    np.testing.assert_allclose(balance_log_weights(long, 16), balance_log_weights(short), atol=1e-10)
    assert not np.allclose(balance_log_weights(long, laws="all")[:16], balance_log_weights(short, laws="all"))
    with pytest.raises(ValueError, match="do not end an iteration"):
        balance_log_weights(long, 17)


def test_the_full_history_mixture_is_biased_low_and_the_past_only_one_is_not_worse_than_the_draws_own(toy):
    """Later laws were shaped by a good draw and put more mass on it: over every iteration's law, Ẑ / Z has mean
    well below 1 (measured 0.69 ± 0.02 at λ = 10, 96 rollouts, 40 seeds), which is why the default mixes only the
    laws up to each draw's own iteration; those weights' log Ẑ RMSE is no worse than the draws' own (measured
    0.198 vs 0.216 there; Ẑ / Z 1.06 ± 0.03: not exactly unbiased either)."""
    lam = 10.0
    _, root = toy.target(lam)
    errors = {"own": [], "past": [], "all": []}
    for seed in range(24):
        tree = fresh(toy, lam, seed=seed, batch=8, defensive=0.5)
        tree.run(96)
        errors["own"].append(log_mean_exp(tree.draw_log_weights) - lam * root)
        for laws in ("past", "all"):
            errors[laws].append(log_mean_exp(balance_log_weights(tree, laws=laws)) - lam * root)
    ratios = np.exp(errors["all"])
    assert ratios.mean() + 3 * ratios.std(ddof=1) / np.sqrt(ratios.size) < 0.9, ratios.mean()
    rmse = {name: float(np.sqrt(np.mean(np.square(e)))) for name, e in errors.items()}
    assert rmse["past"] <= rmse["own"] * 1.05, rmse


def test_searches_whose_law_it_cannot_rebuild_are_refused_by_name(toy):
    """DTS (draw-count weights), the hybrid (Q_φ and virtual visits), widening and shrinkage: a named error."""
    head = ExactHead(toy, 4.0, noise=0.3)
    for settings, head_, name in [({"method": "dts"}, None, "method"), ({"hybrid": "visits"}, head, "value head"),
                                  ({"selection_shrink": 2.0}, None, "selection_shrink"),
                                  ({"selection_shrink": None}, None, "selection_shrink"),  # MaxEnt-TS's default
                                  ({"expansion": "widening"}, None, "widening")]:
        tree = fresh(toy, 4.0, head=head_, **settings)
        tree.iterate(4)
        with pytest.raises(ValueError, match=name):
            balance_log_weights(tree)
    tree = fresh(toy, 4.0)
    tree.iterate(4)
    with pytest.raises(ValueError, match="'past' or 'all'"):
        balance_log_weights(tree, laws="future")
