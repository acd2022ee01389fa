"""MaxEnt-TS's and DTS's defensive mixtures on the enumerable toy: exact weights, unbiased Z, each weight within
1/ε of an i.i.d. rollout-policy draw's, and an estimate of log Z no worse than i.i.d. draws of p at equal LM tokens."""

import numpy as np
import pytest
from toy_problem import ACTION_IDS, PROMPT, ExactHead, Toy, mixture_distribution, policy_step_log_probs

from sadt.importance import log_mean_exp
from search.config import search_config
from search.tree_search import TreeSearch


@pytest.fixture(scope="module")
def toy():
    return Toy()


def search(toy, lam, n, seed=0, head=None, **settings) -> TreeSearch:
    config = search_config(lam=lam, n_rollouts=n, batch_size=8, seed=seed, progress=False, **settings)
    tree = TreeSearch(toy.lm, toy.problem, config, value_head=head)
    tree.run()
    return tree


@pytest.mark.parametrize("settings", [
    {"defensive": 0.5, "defensive_adapt": False}, {"defensive": 0.2, "selection_scale": 0.5},
    {"defensive": 0.0, "selection_scale": 0.5},
    {"defensive": 0.5, "hybrid": "visits"}, {"method": "dts", "defensive": 0.5}, {"method": "dts", "defensive": 0.0},
    {"defensive": 0.5, "selection_shrink": 2.0}, {"defensive": 0.0, "selection_shrink": 1.0},
    {"defensive": 0.5, "defensive_adapt": True}, {"method": "dts", "defensive": 0.3, "defensive_adapt": True},
    {"defensive": 0.5, "defensive_rule": "min_variance"},
])
def test_each_draw_is_weighted_by_the_exact_mixture_law(toy, settings):
    """log w = log p(x) + λ r(x) − log(ε q_roll(x) + (1 − ε) q_tree(x)), both laws enumerated before the draw."""
    lam = 4.0
    head = ExactHead(toy, lam, noise=0.3) if "hybrid" in settings else None
    completion = policy_step_log_probs(toy, lam, toy_q(toy, head) if head else None)
    tree = search(toy, lam, 24, head=head, **settings)
    shares = {tree.epsilon}
    for _ in range(6):
        law = mixture_distribution(tree, toy, completion)
        x = toy.index(tree.tree.actions_to(tree.iterate(1)[0]))
        assert tree.draw_log_weights[-1] == pytest.approx(toy.log_p[x] + lam * toy.table[x] - np.log(law[x]), abs=1e-6)
        shares.add(tree.epsilon)
    assert (len(shares) > 1) == tree.config.adapts_defensive  # an adapted ε moved, a fixed one did not


def toy_q(toy, head) -> np.ndarray:
    """The head's Q_φ(s_t, ·) at every step of every toy sequence, (S, L, A)."""
    import torch

    ids = torch.tensor([PROMPT + [ACTION_IDS[a] for a in s] for s in toy.sequences])
    with torch.no_grad():
        hidden = toy.lm.model.model(ids).last_hidden_state[:, len(PROMPT) - 1 : -1].double()
    return np.stack([head(h).numpy() for h in hidden])


def test_undefended_dts_draws_from_a_law_that_misses_part_of_pi_and_the_defensive_one_covers_it(toy):
    """DTS's Boltzmann law covers only the children drawn so far: some x with π(x) > 0 has q(x) = 0, so its
    Ẑ is biased low; with ε > 0 every sequence has q(x) ≥ ε p(x) > 0."""
    lam = 4.0
    completion = policy_step_log_probs(toy, lam)
    laws = [mixture_distribution(search(toy, lam, 48, method="dts", defensive=eps), toy, completion)
            for eps in (0.0, 0.5)]
    assert (laws[0] == 0).any() and (laws[1] >= 0.5 * np.exp(completion.sum(axis=1)) - 1e-12).all()
    assert np.isclose(laws[0].sum(), 1) and np.isclose(laws[1].sum(), 1)


@pytest.mark.parametrize("method, rule", [("maxent_ts", None), ("dts", None), ("maxent_ts", "em"),
                                          ("maxent_ts", "min_variance")])
def test_defensive_weights_are_unbiased_for_z(toy, method, rule):
    """Ẑ = mean w has mean Z over seeds (a sharp tilt, where the tree's selection is most uneven), with ε fixed or
    adapted between iterations from the earlier draws (either rule)."""
    lam = 10.0
    _, root = toy.target(lam)
    adapt = {"defensive_adapt": rule is not None, "defensive_rule": rule or "em"}
    ratios = np.array([np.exp(log_mean_exp(search(toy, lam, 32, seed=s, method=method, defensive=0.5,
                                                  **adapt).draw_log_weights) - lam * root)
                       for s in range(60)])
    standard_error = ratios.std(ddof=1) / np.sqrt(ratios.size)
    assert abs(ratios.mean() - 1) < 3 * standard_error, (ratios.mean(), standard_error)


@pytest.mark.parametrize("hybrid, adapt", [(False, False), (True, False), (False, True)])
def test_no_weight_exceeds_one_over_epsilon_times_the_rollout_policys(toy, hybrid, adapt):
    """w(x) ≤ (1/ε) p(x) e^{λr(x)} / q_roll(x): the i.i.d. weight of the same x under the rollout policy (an
    adapted ε: 1/0.1, its floor)."""
    from search.draws import ADAPTIVE_SHARE_BOUNDS

    lam, epsilon = 10.0, 0.25
    head = ExactHead(toy, lam, noise=0.5) if hybrid else None
    roll = policy_step_log_probs(toy, lam, toy_q(toy, head) if hybrid else None).sum(axis=1)  # log q_roll(x)
    tree = search(toy, lam, 64, head=head, defensive=epsilon, defensive_adapt=adapt,
                  hybrid="visits" if hybrid else "off")
    x = np.array([toy.index(tree.tree.actions_to(int(t))) for t in tree.draw_terminals])
    iid = toy.log_p[x] + lam * toy.table[x] - roll[x]
    floor = ADAPTIVE_SHARE_BOUNDS[0] if adapt else epsilon
    assert np.all(tree.draw_log_weights <= iid - np.log(floor) + 1e-9)
    if not hybrid:  # the undefended tree has no such bound: some of its draws weigh more than 1/ε i.i.d. weights
        undefended = search(toy, lam, 64, defensive=0.0)
        x = np.array([toy.index(undefended.tree.actions_to(int(t))) for t in undefended.draw_terminals])
        assert np.max(undefended.draw_log_weights - (toy.log_p[x] + lam * toy.table[x])) > -np.log(epsilon)


def test_the_default_tree_estimates_log_z_no_worse_than_iid_prior_draws_at_equal_tokens(toy):
    """At a sharp tilt (λ = 30) the undefended tree's log Ẑ had 1.4× the RMSE of i.i.d. p at its tokens
    (measured: 1.87 vs 1.36 over 30 seeds, 64 rollouts); the default (ε adapted from 0.5, selection shrunk by
    SELECTION_SHRINK pseudo-visits) must not lose to i.i.d. p."""
    lam, n, seeds = 30.0, 64, 24
    _, root = toy.target(lam)
    errors, tokens = [], []
    for seed in range(seeds):
        before = toy.lm.stats.tokens
        tree = search(toy, lam, n, seed=seed)
        tokens.append(toy.lm.stats.tokens - before - len(PROMPT))
        errors.append(log_mean_exp(tree.draw_log_weights) - lam * root)
    draws = int(np.mean(tokens) / toy.length)  # i.i.d. p draws the same tokens buy (a draw is `length` tokens)
    rng = np.random.default_rng(0)
    prior = np.exp(toy.log_p - np.logaddexp.reduce(toy.log_p))
    iid = [log_mean_exp(lam * toy.table[rng.choice(prior.size, size=draws, p=prior)]) - lam * root
           for _ in range(400)]
    tree_rmse, iid_rmse = np.sqrt(np.mean(np.square(errors))), np.sqrt(np.mean(np.square(iid)))
    assert tree_rmse <= iid_rmse, (tree_rmse, iid_rmse, draws)


def test_the_adapted_share_is_the_weight_the_defensive_descents_carry():
    """ε̂ = Σ w̄_i ρ_i within [0.1, 0.95]: draws that only a defensive descent could make (ρ = 1) holding all the
    weight push ε to its ceiling, the tree's own (ρ = 0) to its floor, equal weight to the middle; shrunk
    towards the start by m pseudo-draws; and
    ρ = ε q_roll / (ε q_roll + (1 − ε) q_tree) of a descent's choices."""
    from search.draws import DescentLaw, Draw, adapted_defensive_share

    def draws(log_weights, responsibilities):
        return [Draw(0, w, r) for w, r in zip(log_weights, responsibilities)]

    assert adapted_defensive_share(draws([0.0, -50.0], [1.0, 0.0]), 0.5, prior_draws=0) == 0.95
    assert adapted_defensive_share(draws([-50.0, 0.0], [1.0, 0.0]), 0.5, prior_draws=0) == 0.1
    three = draws([0.0, 0.0, np.log(2.0)], [1.0, 0.0, 0.25])  # w̄ = 1/4, 1/4, 1/2: ε̂ = 0.375, ESS = 8/3
    assert adapted_defensive_share(three, 0.5, prior_draws=0) == pytest.approx(0.375)
    # shrunk towards the start as if it had m effective draws: (ESS ε̂ + m ε₀) / (ESS + m)
    assert adapted_defensive_share(three, 0.5, prior_draws=4) == pytest.approx((8 / 3 * 0.375 + 2) / (8 / 3 + 4))
    assert adapted_defensive_share(draws([0.0, -50.0], [1.0, 0.0]), 0.5, prior_draws=4) == pytest.approx(0.6)
    law = DescentLaw(log_roll=np.log(0.2), log_tree=np.log(0.6))
    assert law.responsibility(0.5) == pytest.approx(0.1 / (0.1 + 0.3)) and law.responsibility(0.0) == 0.0
    with pytest.raises(ValueError, match="defensive_adapt"):
        search_config(defensive=0.05, defensive_adapt=True)
    with pytest.raises(ValueError, match="defensive_adapt_prior"):
        search_config(defensive_adapt_prior=-1.0)
    assert search_config().adapts_defensive and not search_config(defensive=0.0).adapts_defensive  # ε = 0: no
    # mixture to adapt (the undefended tree needs no second switch)


def test_the_variance_rule_picks_the_share_that_minimises_the_draws_second_moment():
    """M(α) = Σ w_i² / (α ρ_i / ε_i + (1 − α)(1 − ρ_i) / (1 − ε_i)): two draws at ε = 0.5, one only the defensive
    component could make (ρ = 1, w² = 4), one only the tree's (ρ = 0, w² = 1), give M ∝ 4/α + 1/(1 − α), least
    at α = 2/3; all the weight on one kind pushes ε to that bound; shrunk towards the start like the EM rule."""
    from search.draws import Draw, min_variance_defensive_share

    def draws(log_weights, responsibilities, share=0.5):
        return [Draw(0, w, r, share) for w, r in zip(log_weights, responsibilities)]

    assert min_variance_defensive_share(draws([np.log(2.0), 0.0], [1.0, 0.0]), 0.5, 0) == pytest.approx(2 / 3, abs=2e-3)
    assert min_variance_defensive_share(draws([0.0, -50.0], [1.0, 0.0]), 0.5, 0) == 0.95
    assert min_variance_defensive_share(draws([-50.0, 0.0], [1.0, 0.0]), 0.5, 0) == 0.1
    # each draw's own share enters: M = 4·0.2/α + 1·0.5/(1 − α), least at √0.8 / (√0.8 + √0.5)
    assert min_variance_defensive_share(draws([np.log(2.0)], [1.0], 0.2) + draws([0.0], [0.0], 0.5), 0.5, 0) == \
        pytest.approx(np.sqrt(0.8) / (np.sqrt(0.8) + np.sqrt(0.5)), abs=2e-3)
    ess = 1.8  # w̄ = 2/3, 1/3
    assert min_variance_defensive_share(draws([np.log(2.0), 0.0], [1.0, 0.0]), 0.3, 4) == \
        pytest.approx((ess * 2 / 3 + 4 * 0.3) / (ess + 4), abs=2e-3)
    with pytest.raises(ValueError, match="defensive_rule"):
        search_config(defensive_rule="newton")


def test_the_share_rules_fed_batch_by_batch_give_the_one_pass_answer():
    """A search feeds its rule one iteration's draws at a time (running sums, not a rebuild from every draw): after
    each batch ε equals the formulas over all draws so far, EM's (ESS Σ w̄ρ + m ε₀) / (ESS + m) and the variance
    rule's grid argmin of Σ_i w_i² / (α ρ_i / ε_i + (1 − α)(1 − ρ_i) / (1 − ε_i)), both computed here directly."""
    from sadt.importance import effective_sample_size
    from search.draws import ADAPTIVE_SHARE_BOUNDS, SHARE_GRID, Draw, EMShare, MinVarianceShare

    rng = np.random.default_rng(3)
    draws = [Draw(0, float(w), float(r), float(e)) for w, r, e in
             zip(3 * rng.normal(size=45), rng.uniform(size=45), rng.uniform(0.1, 0.9, size=45))]
    em, variance, start, m = EMShare(), MinVarianceShare(), 0.4, 2.0
    alphas = np.linspace(*ADAPTIVE_SHARE_BOUNDS, SHARE_GRID)[:, None]
    for end in range(5, 46, 5):  # batches of 5
        seen = draws[:end]
        w, rho, eps = (np.array([getattr(d, f) for d in seen]) for f in ("log_weight", "responsibility", "share"))
        ess, normalised = effective_sample_size(w), np.exp(w - np.logaddexp.reduce(w))
        moment = np.exp(2 * w) / (alphas * rho / eps + (1 - alphas) * (1 - rho) / (1 - eps))
        best = float(alphas[np.argmin(moment.sum(axis=1)), 0])
        em_share, variance_share = (np.clip((ess * estimate + m * start) / (ess + m), *ADAPTIVE_SHARE_BOUNDS)
                                    for estimate in (normalised @ rho, best))
        assert em.update(draws[end - 5:end], start, m) == pytest.approx(em_share, rel=1e-12)
        assert variance.update(draws[end - 5:end], start, m) == pytest.approx(variance_share, rel=1e-12)


def test_the_variance_rule_keeps_the_start_when_the_draws_cannot_tell_the_shares_apart():
    """After the first iteration every descent stopped at the root, so each draw's ρ equals its ε and M(α) is flat:
    ε must stay at ε₀, not go wherever the last bits of ρ (which differ between CPUs) put the grid's argmin."""
    from search.draws import Draw, min_variance_defensive_share

    for noise in (9e-16, -9e-16, 0.0):
        draws = [Draw(0, w, 0.5 + noise * k, 0.5) for k, w in enumerate([-3.2, -12.5, -8.7, -3.2])]
        assert min_variance_defensive_share(draws, 0.5, prior_draws=0) == pytest.approx(0.5, abs=1e-12)
        assert min_variance_defensive_share(draws, 0.3, prior_draws=0) == pytest.approx(0.3, abs=1e-12)


def test_shrunk_selection_weighs_a_childs_estimate_by_its_visits():
    """Ṽ = (N V̂(s·a) + n0 V̂(s)) / (N + n0): an unvisited child reads its parent's value, a child seen n0 times
    sits halfway, a child seen 2000 times reads its own; the hybrid, whose Q_φ stands in for few visits, refuses it."""
    from search.selection import shrink_to_parent

    shrunk = shrink_to_parent(np.array([1.0, 0.0, 3.0]), np.array([0, 2, 2000]), parent_value=0.5, n0=2.0)
    np.testing.assert_allclose(shrunk[:2], [0.5, 0.25])
    assert abs(shrunk[2] - 3.0) < 0.01
    with pytest.raises(ValueError, match="selection_shrink"):
        search_config(hybrid="visits", selection_shrink=1.0)


def test_mc_only_maxent_ts_shrinks_selection_by_default_and_the_hybrid_does_not():
    """Unset, `selection_shrink` is SELECTION_SHRINK without a head and 0 with one, so turning a default config into
    the hybrid (`dataclasses.replace`) is valid; a value set by hand wins."""
    import dataclasses

    from search.config import SELECTION_SHRINK

    mc_only = search_config()
    assert mc_only.selection_pseudo_visits == SELECTION_SHRINK > 0
    assert dataclasses.replace(mc_only, hybrid="visits").selection_pseudo_visits == 0.0
    assert search_config(selection_shrink=0.0).selection_pseudo_visits == 0.0
    assert search_config(selection_shrink=1.5).selection_pseudo_visits == 1.5


def test_mc_only_maxent_ts_moves_its_share_by_the_variance_rule_and_the_hybrid_by_em(toy):
    """Unset, `defensive_rule` is DEFENSIVE_RULE without a head and "em" with one (DTS: "em"); the search reads
    that resolved rule, so the default tree draws exactly what the rule set by hand draws, and not what EM does."""
    import dataclasses

    from search.config import DEFENSIVE_RULE

    mc_only = search_config()
    assert mc_only.share_rule == DEFENSIVE_RULE == "min_variance"
    assert dataclasses.replace(mc_only, hybrid="visits").share_rule == "em"
    assert search_config(defensive_rule="em").share_rule == "em" and search_config("dts").share_rule == "em"
    default, by_hand, em = (search(toy, 10.0, 32, seed=1, **rule).draw_log_weights
                            for rule in ({}, {"defensive_rule": "min_variance"}, {"defensive_rule": "em"}))
    np.testing.assert_array_equal(default, by_hand)
    assert not np.array_equal(default, em)
