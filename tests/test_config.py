from pathlib import Path

import pytest

from sadt.config import ConfigError, load_config
from search.caption import CaptionConfig
from search.caption_harvest import CaptionHarvestConfig
from search.harvest import HarvestConfig
from search.run import RunConfig
from trainers.rounds import RoundsConfig

ROOT = Path(__file__).parents[1]
# what a user runs (configs/) and the benchmarks' and experiments' own (benchmarks/configs, benchmarks/experiments)
CONFIG_DIRS = [ROOT / "configs", ROOT / "benchmarks", ROOT / "benchmarks" / "experiments"]
CONFIGS = sorted(p for d in CONFIG_DIRS for p in d.glob("*/*.yaml") if p.parent.name != "fit")
FIT_CONFIGS = sorted(p for d in CONFIG_DIRS for p in d.glob("fit/*.yaml"))


def benchmark_schema(path: Path):
    """The config class of the benchmark a benchmarks/configs/ file is for, by its name's prefix: `caption*`
    search.caption's, `rounds_*` trainers.rounds', else the `benchmarks.<script>` whose prefix it has (the
    amortisation benchmark's when none)."""
    import importlib

    if path.name.startswith("caption"):
        return CaptionConfig
    if path.name.startswith("rounds_"):
        return RoundsConfig
    prefixes = {"samplers_toy": ("samplers_toy", "ToySamplersConfig"), "samplers": ("samplers", "SamplersConfig"),
                "proposal_": ("proposal_quality", "ProposalConfig"),
                "forward_kl_scan": ("forward_kl_scan", "ScanConfig"), "tilt_room": ("tilt_room", "RoomConfig"),
                "head_capacity": ("head_capacity", "CapacityConfig")}
    script, name = next((v for k, v in prefixes.items() if path.name.startswith(k)),
                        ("amortisation", "AmortisationConfig"))
    return getattr(importlib.import_module(f"benchmarks.{script}"), name)


def harvest_schema(path: Path):
    """`caption_*` harvests are search.caption_harvest's (a caption head's prompts), the rest search.harvest's."""
    return CaptionHarvestConfig if path.name.startswith("caption") else HarvestConfig


SCHEMAS = {"demo": RunConfig, "search": RunConfig, "harvest": harvest_schema, "text": CaptionConfig,
           "rounds": RoundsConfig, "configs": benchmark_schema}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert path.parent.name in SCHEMAS, f"{path}: no schema known for {path.parent.name}/"
    schema = SCHEMAS[path.parent.name]
    config = load_config(path, schema if isinstance(schema, type) else schema(path))
    if hasattr(config, "search"):
        assert config.search.n_rollouts >= 1


@pytest.mark.parametrize(
    "text, message, schema",
    [
        ("n_sample: 3\n", "unknown key `n_sample`", RunConfig),
        ("n_samples: three\n", "`n_samples` must be int", RunConfig),
        ("n_samples: 0\n", "`n_samples` must be >= 1", RunConfig),
        ("codec:\n  precison: 2\n", "unknown key `codec.precison`", RunConfig),
        ("reward:\n  gamma: -1\n", "gamma", RunConfig),
        ("n_samples: [\n", "not valid YAML", RunConfig),
        ("methods: [hybrid]\nhead: null\n", "read a flow head: set `head`", RunConfig),
        ("horizon: 0\n", "`horizon` must be >= 4", RunConfig),
        ("methods: [h]\nvariants:\n  h: {hybird: visits}\n", "unknown key `variants.h.hybird`", RunConfig),
        ("methods: [h]\nvariants:\n  h: {n_rollouts: 0}\n", "`n_rollouts` must be >= 1", RunConfig),
        ("methods: [h]\nhead: null\nvariants:\n  h: {hybrid: visits}\n", "read a flow head: set `head`", RunConfig),
        ("methods: [twisted_smc]\nhead: null\n", "read a flow head", RunConfig),
        ("methods: [smc]\nvariants:\n  smc: {lam: 2.0}\n", "must differ from the methods", RunConfig),
        ("sampler: policy\n", "caption harvest `sampler` must be one of", CaptionHarvestConfig),
        ("search: {lam: 5.0}\n", "`search.top_k` must be set", CaptionHarvestConfig),
        ("stride: 0\n", "stride >= 1", CaptionHarvestConfig),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, text, message, schema):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, schema)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("path", FIT_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in FIT_CONFIGS])
def test_fit_configs_parse_with_lightning_cli(path, capsys):
    from trainers import fit

    with pytest.raises(SystemExit) as done:
        fit.main(["--config", str(path), "--print_config"])  # parses and validates, builds nothing
    assert done.value.code == 0 and "lam:" in capsys.readouterr().out


def test_fit_rejects_an_unknown_option(tmp_path, capsys):
    from trainers import fit

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lamda: 2.0\n")
    with pytest.raises(SystemExit) as done:
        fit.main(["--config", str(bad), "--print_config"])
    assert done.value.code != 0 and "lamda" in capsys.readouterr().err


def test_the_hybrid_row_is_the_recipe_and_a_variant_of_that_name_refines_it():
    plain = RunConfig(methods=["maxent_ts", "hybrid"])
    assert plain.search_config("maxent_ts").hybrid == "off"
    hybrid = plain.search_config("hybrid")
    assert (hybrid.method, hybrid.hybrid, hybrid.n_rollouts, hybrid.lam) == ("maxent_ts", "visits", 200, 15.0)
    refined = RunConfig(methods=["hybrid"], variants={"hybrid": {"n_rollouts": 50}}).search_config("hybrid")
    assert (refined.hybrid, refined.n_rollouts) == ("visits", 50)

