"""A trained head's card (`head.json`): what it fits, what it is and how it was trained; typed and versioned.

Only `sadt.head_io` (and the MLX loader) read and write it. A card written before versioning (schema 0:
no `schema_version`, value forms as a chain of flags) is migrated on reading; the shipped cards are schema 1.

Schema 1, every key of `head.json`:

| key | type | what |
|---|---|---|
| schema_version | int | `HEAD_CARD_VERSION` |
| lm_fingerprint | str | the LM whose hidden states Q_φ reads (`sadt.lm.base_model.lm_fingerprint`) |
| lam | float | the λ of the soft values it was trained on |
| gamma | float or null | the reward's spectral weight γ |
| codec | object or null | the codec settings of its buffers (`sadt.codec.CodecConfig`) |
| action_token_ids | [int] | the token id of each action |
| head_class | str | the class that loads the weights (`sadt.head_io.HEAD_CLASSES`) |
| head_config | object | that class's config (`sadt.flow_head.FlowHeadConfig`), with `value_form` |
| adapter | object or null | a LoRA adapter beside the weights: `{"kind": "lora", ...}` |
| best | object or null | the kept epoch: `{"epoch", "val_loss"}` |
| training | object | the trainer's settings (`trainers.module.FlowHeadModule`'s hyperparameters) |
| training_data | object | the buffers, prompt counts and harvest settings it was trained on |
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

HEAD_CARD_VERSION = 1
CARD_FILE, WEIGHTS_FILE = "head.json", "head.safetensors"


class ValueForm(str, Enum):
    """The one vocabulary of task values: what a trained head adds to its learned part (`head_config.value_form`),
    or a parameter-free value is (a run's `value_head: <form>_reward`, `sadt.partial_reward.PartialRewardValue`)."""

    NONE = "none"  # a head on the LM's states alone
    PARTIAL = "partial"  # R(s·a): the values completed so far
    LOOK_AHEAD = "look_ahead"  # R⁺: the completed values plus a seasonal-naive fill of the rest
    DIGIT_AHEAD = "digit_ahead"  # R⁺ᵈ: R⁺ that also reads the value being written
    SOFT_AHEAD = "soft_ahead"  # V⁺ᵈ: R⁺ᵈ averaged over noisy guesses of the rest, at λ

    @property
    def parameter_free_name(self) -> str:
        """The name a run gives this form as a value without a trained head, e.g. "soft_ahead_reward"."""
        return f"{self.value}_reward"


# The chain of boolean flags schema-0 cards used, oldest first; each refined the one before it.
VALUE_FORM_FLAGS = {"partial_reward": ValueForm.PARTIAL, "look_ahead": ValueForm.LOOK_AHEAD,
                    "digit_ahead": ValueForm.DIGIT_AHEAD, "soft_ahead": ValueForm.SOFT_AHEAD}


class HeadMismatchError(ValueError):
    """A head was made for another LM or codec, or its card or weights are unreadable; the message names the file."""


def migrate_value_flags(settings: dict) -> dict:
    """Settings (a card's `head_config` or `training`) with schema 0's chain of flags partial_reward →
    look_ahead → digit_ahead → soft_ahead replaced by the one `value_form` they meant."""
    settings = dict(settings)
    if not any(flag in settings for flag in VALUE_FORM_FLAGS):
        return settings
    form = ValueForm.NONE
    for flag, name in VALUE_FORM_FLAGS.items():
        if settings.pop(flag, False):  # the last flag set is the form
            form = name
    settings.setdefault("value_form", form.value)
    return settings


@dataclass(frozen=True)
class HeadCard:
    """A head's card (the module docstring lists the keys)."""

    lm_fingerprint: str
    lam: float
    head_class: str
    head_config: dict
    gamma: float | None = None
    codec: dict | None = None
    action_token_ids: list[int] | None = None
    adapter: dict | None = None
    best: dict | None = None
    training: dict = field(default_factory=dict)
    training_data: dict = field(default_factory=dict)
    schema_version: int = HEAD_CARD_VERSION

    @property
    def value_form(self) -> ValueForm:
        return ValueForm(self.head_config.get("value_form", ValueForm.NONE.value))

    @classmethod
    def for_head(cls, head, **fields) -> HeadCard:
        """The card of `head` (its class and config) with the given fields."""
        return cls(head_class=type(head).__name__, head_config=dataclasses.asdict(head.config), **fields)

    def write(self, directory: Path) -> Path:
        path = directory / CARD_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> HeadCard:
        """The card in `directory`, migrated to this schema.

        Raises:
            HeadMismatchError: naming the file: not JSON, not an object, a newer schema, a missing or mistyped key.
        """
        path = directory / CARD_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HeadMismatchError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(raw, dict):
            raise HeadMismatchError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        return cls.from_json(raw, path)

    @classmethod
    def from_json(cls, raw: dict, path: Path | str = CARD_FILE) -> HeadCard:
        version = raw.get("schema_version", 0)
        if not isinstance(version, int) or version > HEAD_CARD_VERSION:
            raise HeadMismatchError(f"{path}: head card schema {version!r}; this code reads up to {HEAD_CARD_VERSION}")
        if version == 0:
            raw = migrate_card_0(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in raw]
        if missing:
            raise HeadMismatchError(f"{path}: lacks `{missing[0]}`; re-train or restore the head")
        card = cls(**{k: v for k, v in raw.items() if k in known})
        for name, kind in (("lm_fingerprint", str), ("head_class", str), ("head_config", dict)):
            if not isinstance(getattr(card, name), kind):
                raise HeadMismatchError(f"{path}: `{name}` must be a {kind.__name__}, got {getattr(card, name)!r}")
        if isinstance(card.lam, bool) or not isinstance(card.lam, (int, float)):
            raise HeadMismatchError(f"{path}: `lam` must be a number, got {card.lam!r}")
        return card


def migrate_card_0(raw: dict) -> dict:
    """A schema-0 card as schema 1: value flags become `value_form`; a card without `head_class` held an
    MLPFlowHead (the only class before versioning)."""
    out = {**raw, "schema_version": HEAD_CARD_VERSION}
    out.setdefault("head_class", "MLPFlowHead")
    for key in ("head_config", "training"):
        if isinstance(out.get(key), dict):
            out[key] = migrate_value_flags(out[key])
    return out


def read_card(directory: Path, lm_fingerprint: str, codec: dict | None = None) -> HeadCard:
    """The card of the head in `directory`, after checking it was trained for this LM (and codec, when given).

    Raises:
        FileNotFoundError: the directory lacks the weights or the card.
        HeadMismatchError: an unreadable card, or one for another LM or codec.
    """
    if not (directory / CARD_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory}: expected {WEIGHTS_FILE} and {CARD_FILE}")
    card = HeadCard.read(directory)
    if card.lm_fingerprint != lm_fingerprint:
        raise HeadMismatchError(f"{directory}: head trained for LM {card.lm_fingerprint!r}, this LM is "
                                f"{lm_fingerprint!r}")
    if codec is not None and card.codec != codec:
        raise HeadMismatchError(f"{directory}: head trained with codec {card.codec}, not {codec}")
    return card
