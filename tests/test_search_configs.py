"""Issue 35.2: a search's config is a tagged union, one class per family of methods, each with only the settings
its method reads; YAML blocks and a run's rows dispatch on `method`."""

import dataclasses

import pytest

from sadt.config import ConfigError, from_dict
from search.config import CONFIG_OF, METHODS, DTSConfig, MaxEntTSConfig, SearchConfig, SMCConfig, carried, search_config
from search.methods import METHOD_STRATEGIES
from search.run import RunConfig
from search.smc import SMC_METHODS

COMMON = {f.name for f in dataclasses.fields(SearchConfig)}


def settings(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - COMMON


def test_every_method_has_one_config_class_whose_tag_it_checks():
    assert set(CONFIG_OF) == set(METHODS + SMC_METHODS) and set(METHOD_STRATEGIES) == set(METHODS)
    for method, cls in CONFIG_OF.items():
        config = search_config(method)
        assert type(config) is cls and config.method == method
    with pytest.raises(ValueError, match="not one of DTSConfig's"):
        DTSConfig(method="maxent_ts")
    with pytest.raises(ValueError, match="not one of SearchConfig's"):
        SearchConfig()  # the union's base holds no method's settings: build a member
    with pytest.raises(ValueError, match="`method` must be one of"):
        search_config("beam")


def test_each_class_holds_only_what_its_methods_read():
    """The settings that once applied to every method now live with the methods that read them."""
    assert settings(MaxEntTSConfig) >= {"hybrid", "defensive", "sampling", "selection_scale", "guided_rollouts"}
    assert settings(DTSConfig) == {"widening_c", "widening_alpha", "uct_c", "defensive", "defensive_adapt",
                                   "defensive_adapt_prior", "defensive_rule"}  # no
    # `expansion`: DTS always widens; `defensive` mixes p into DTS's descents (issue 34), DTS*'s UCT has no law to
    # mix it into
    with pytest.raises(ValueError, match="dts_star picks by UCT"):
        search_config("dts_star", defensive=0.5)
    assert settings(CONFIG_OF["mcts_uct"]) == {"expansion", "widening_c", "widening_alpha", "uct_c"}
    assert settings(CONFIG_OF["ancestral"]) == set() and settings(CONFIG_OF["flow"]) == {"guide_scale"}
    assert settings(SMCConfig) == {"ess_threshold", "guide_scale"}
    with pytest.raises(ValueError, match="`defensive` is a setting of maxent_ts, dts, dts_star, not of method 'smc'"):
        search_config("smc", defensive=0.2)


def test_the_shared_questions_have_each_methods_answer():
    assert [search_config(m).needs_head for m in ("maxent_ts", "flow", "smc", "twisted_smc", "dts")] == \
        [False, True, False, True, False]
    assert search_config(hybrid="visits").needs_head and search_config(hybrid="fixed").head_mix.mode == "fixed"
    assert search_config().head_mix is None and search_config("mcts_uct").head_mix is None
    assert (search_config().defensive_share, search_config("dts").defensive_share) == (0.5, 0.0)
    assert search_config("flow").guides_rollouts and not search_config(guided_rollouts=False).guides_rollouts
    assert (search_config().final_sampling, search_config(sampling="tree").final_sampling,
            search_config("dts_star").final_sampling) == ("resample", "tree", "tree")


def test_a_config_carried_to_another_method_keeps_the_settings_both_read():
    maxent = search_config(lam=7.0, n_rollouts=64, expansion="widening", widening_c=2.0, defensive=0.2,
                           guide_scale=0.5)
    mcts = maxent.for_method("mcts_uct", uct_c=3.0)
    assert (mcts.lam, mcts.n_rollouts, mcts.expansion, mcts.widening_c, mcts.uct_c) == (7.0, 64, "widening", 2.0, 3.0)
    twisted = maxent.for_method("twisted_smc")
    assert (type(twisted), twisted.guide_scale, twisted.lam) == (SMCConfig, 0.5, 7.0)
    assert "defensive" not in carried(maxent, "dts") and carried(maxent, "dts")["widening_c"] == 2.0


def test_a_yaml_block_is_built_as_its_methods_class_and_names_a_stray_key():
    smc = from_dict({"method": "twisted_smc", "ess_threshold": 0.3}, SearchConfig, source="s.yaml", prefix="search.")
    assert type(smc) is SMCConfig and smc.ess_threshold == 0.3
    assert type(from_dict({"lam": 5.0}, SearchConfig)) is MaxEntTSConfig  # no method: the default, maxent_ts
    with pytest.raises(ConfigError, match="s.yaml: unknown key `search.hybrid`: is a setting of maxent_ts, not of"):
        from_dict({"method": "dts", "hybrid": "visits"}, SearchConfig, source="s.yaml", prefix="search.")
    with pytest.raises(ConfigError, match=r"s.yaml: `search.method` must be one of"):
        from_dict({"method": "beam"}, SearchConfig, source="s.yaml", prefix="search.")


def test_one_run_block_feeds_rows_of_different_methods():
    """A run's `search:` block may hold maxent_ts settings and still feed an SMC row; a variant may switch method."""
    run = RunConfig(methods=["maxent_ts", "smc", "hybrid", "wide"], search=search_config(defensive=0.2, lam=9.0),
                    variants={"wide": {"method": "twisted_smc", "ess_threshold": 0.9}})
    maxent, smc, hybrid, wide = (run.search_config(name) for name in run.methods)
    assert (maxent.defensive, maxent.hybrid, smc.method, smc.lam) == (0.2, "off", "smc", 9.0)
    assert (hybrid.hybrid, hybrid.defensive) == ("visits", 0.2)
    assert (type(wide), wide.method, wide.ess_threshold, wide.lam) == (SMCConfig, "twisted_smc", 0.9, 9.0)
    assert run.rows_reading_head == ["hybrid", "wide"]
    with pytest.raises(ConfigError, match=r"`variants.bad.selection_scale`: is a setting of maxent_ts, not of method"):
        RunConfig(methods=["bad"], variants={"bad": {"method": "dts", "selection_scale": 0.5}})
    dts = RunConfig(methods=["dts"], search=search_config(defensive=0.2)).search_config("dts")
    assert dts.defensive == 0.0  # maxent_ts's ε stays with maxent_ts: a DTS row is published DTS unless it asks
