"""The head card (`head.json`): typed, versioned, migrated from schema 0, read and written only by head_io."""

import json
from pathlib import Path

import pytest
import torch

from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.head_card import HEAD_CARD_VERSION, HeadCard, HeadMismatchError, ValueForm
from sadt.head_io import head_state_equal, load_head, save_head

ROOT = Path(__file__).resolve().parents[1]


def test_a_card_round_trips_through_save_and_load(tmp_path):
    head = MLPFlowHead(torch.randn(12, 16), FlowHeadConfig(hidden=8, layers=1, value_form="soft_ahead"))
    card = HeadCard.for_head(head, lm_fingerprint="lm", lam=3.0, codec={"precision": 3}, best={"epoch": 1})
    save_head(head, tmp_path, card)
    loaded, read = load_head(tmp_path, "lm", {"precision": 3})
    assert read == card and read.schema_version == HEAD_CARD_VERSION and read.value_form is ValueForm.SOFT_AHEAD
    assert head_state_equal(loaded, head) and read.lam == 3.0


def test_a_schema_0_card_migrates_its_value_flags(tmp_path):
    head = MLPFlowHead(torch.randn(12, 16), FlowHeadConfig(hidden=8, layers=1, value_form="digit_ahead"))
    save_head(head, tmp_path, HeadCard.for_head(head, lm_fingerprint="lm", lam=2.0))
    raw = json.loads((tmp_path / "head.json").read_text())
    del raw["schema_version"], raw["head_class"]  # as written before versioning
    del raw["head_config"]["value_form"]
    raw["head_config"].update(partial_reward=True, look_ahead=True, digit_ahead=True, soft_ahead=False)
    raw["training"] = {"lr": 0.1, "partial_reward": True, "look_ahead": False}
    (tmp_path / "head.json").write_text(json.dumps(raw))
    loaded, card = load_head(tmp_path, "lm")
    assert card.value_form is ValueForm.DIGIT_AHEAD and loaded.config.value_form == "digit_ahead"
    assert card.training == {"lr": 0.1, "value_form": "partial"} and card.head_class == "MLPFlowHead"


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(schema_version=HEAD_CARD_VERSION + 1), "head card schema 2; this code reads up to 1"),
    (lambda raw: raw.pop("lam"), "lacks `lam`"),
    (lambda raw: raw.update(lam="high"), "`lam` must be a number"),
    (lambda raw: raw.update(head_class="TransformerHead"), "`head_class` 'TransformerHead' is not one of"),
])
def test_a_bad_card_is_one_error_naming_the_file_and_key(tmp_path, change, message):
    head = MLPFlowHead(torch.randn(12, 16), FlowHeadConfig(hidden=8, layers=1))
    save_head(head, tmp_path, HeadCard.for_head(head, lm_fingerprint="lm", lam=2.0))
    raw = json.loads((tmp_path / "head.json").read_text())
    change(raw)
    (tmp_path / "head.json").write_text(json.dumps(raw))
    with pytest.raises(HeadMismatchError, match=message) as err:
        load_head(tmp_path, "lm")
    assert str(tmp_path) in str(err.value)


def test_the_shipped_cards_are_the_current_schema():
    for card_file in sorted((ROOT / "checkpoints/heads").glob("*/head.json")):
        raw = json.loads(card_file.read_text())
        assert raw["schema_version"] == HEAD_CARD_VERSION, card_file
        assert HeadCard.from_json(raw, card_file) == HeadCard.read(card_file.parent)


def test_one_vocabulary_of_value_forms():
    from sadt.partial_reward import DROPPED_VALUE_FORMS, TASK_VALUES, VALUE_FORMS
    from search.forecast_task import PARAMETER_FREE_VALUES

    assert set(TASK_VALUES) == {f.value for f in ValueForm} - {"none"}
    assert set(VALUE_FORMS) | set(DROPPED_VALUE_FORMS) == set(TASK_VALUES)
    assert PARAMETER_FREE_VALUES == {f"{form}_reward": form for form in TASK_VALUES}
