"""What ships is what the READMEs name: every config under configs/ and every head under checkpoints/heads/."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NAMING_DOCS = [ROOT / "README.md", ROOT / "checkpoints" / "heads" / "README.md"]
SHIPPED_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
SHIPPED_HEADS = sorted(p for p in (ROOT / "checkpoints" / "heads").iterdir() if p.is_dir())


def named_text() -> str:
    return "\n".join(doc.read_text() for doc in NAMING_DOCS)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in SHIPPED_CONFIGS])
def test_every_shipped_config_is_named_in_a_readme(path):
    assert str(path.relative_to(ROOT)) in named_text(), f"{path.relative_to(ROOT)} is named in no README: " \
        "document it or move it to benchmarks/experiments/"


@pytest.mark.parametrize("path", SHIPPED_HEADS, ids=[p.name for p in SHIPPED_HEADS])
def test_every_shipped_head_is_named_and_complete(path):
    assert f"checkpoints/heads/{path.name}" in named_text() or f"`{path.name}`" in named_text(), \
        f"{path.name} is named in no README"
    assert (path / "head.json").is_file() and (path / "head.safetensors").is_file()


def test_at_most_three_heads_ship():
    assert 1 <= len(SHIPPED_HEADS) <= 3, [p.name for p in SHIPPED_HEADS]


def test_the_recommended_head_ships():
    from search.config import RECOMMENDED_HEAD

    assert (ROOT / RECOMMENDED_HEAD) in SHIPPED_HEADS


@pytest.mark.parametrize("path", SHIPPED_HEADS, ids=[p.name for p in SHIPPED_HEADS])
def test_every_shipped_head_records_the_contexts_it_learned_from(path):
    """The sidecar's training data is that of the shipped harvest config writing its buffer: one command rebuilds it."""
    import json

    import numpy as np

    from sadt.config import load_config
    from search.harvest import HarvestConfig

    data = json.loads((path / "head.json").read_text())["training_data"]
    harvest_configs = sorted((ROOT / "configs" / "harvest").glob("*.yaml"))
    # caption_* harvests are search.caption_harvest's (text prompts), never a forecast head's buffer
    configs = [load_config(p, HarvestConfig) for p in harvest_configs if not p.name.startswith("caption")]
    harvests = {config.output: config for config in configs}
    (buffer,), (recorded,) = data["buffers"], data["harvests"]
    assert buffer in harvests, f"{path.name}: no config under configs/harvest/ writes {buffer}"
    harvest = harvests[buffer]
    for field, value in recorded.items():
        assert list(np.atleast_1d(value)) == list(np.atleast_1d(getattr(harvest, field))), f"{path.name}: {field}"
    assert data["train_prompts"] + data["val_prompts"] == len(harvest.series) * harvest.windows_per_series \
        * len(harvest.seeds) + harvest.generated
