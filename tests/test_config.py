from pathlib import Path

import pytest

from sadt.config import ConfigError, load_config
from search.harvest import HarvestConfig
from search.run import RunConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))
SCHEMAS = {"demo": RunConfig, "search": RunConfig, "harvest": HarvestConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert path.parent.name in SCHEMAS, f"{path}: no schema known for configs/{path.parent.name}/"
    config = load_config(path, SCHEMAS[path.parent.name])
    assert config.search.n_rollouts >= 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("n_sample: 3\n", "unknown key `n_sample`"),
        ("n_samples: three\n", "`n_samples` must be int"),
        ("n_samples: 0\n", "`n_samples` must be >= 1"),
        ("codec:\n  precison: 2\n", "unknown key `codec.precison`"),
        ("reward:\n  gamma: -1\n", "gamma"),
        ("n_samples: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, RunConfig)
    assert str(path) in str(err.value)
