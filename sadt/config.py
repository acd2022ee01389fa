"""Load a YAML file of overrides into a (nested) frozen dataclass, strictly.

Defaults live in the dataclasses; a YAML file sets only what differs. An unknown key or a value
of the wrong type is an error naming the file and the dotted key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file and key."""


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read `path` (YAML mapping of overrides) into `cls`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    return from_dict(raw, cls, source=str(path))


def from_dict(raw: Any, cls: type[T], *, source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively; errors start with `source: `
    (none when `source` is empty)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(source)}`{prefix or '<top>'}` must be a mapping, got {type(raw).__name__}")
    if hasattr(cls, "resolve_class"):  # a tagged union (search.config.SearchConfig): the mapping names its class
        cls = cls.resolve_class(raw, source, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        why = f": {cls.unknown_key(unknown[0], raw)}" if hasattr(cls, "unknown_key") else ""  # e.g. another method's
        raise ConfigError(f"{_at(source)}unknown key `{prefix}{unknown[0]}`{why}; allowed keys are {sorted(fields)}")
    values = {name: _convert(value, hints[name], source, f"{prefix}{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:  # a range check of the block at `prefix`: name it as the user wrote it
        where = f"in `{prefix.rstrip('.')}`: " if prefix else ""
        raise ConfigError(f"{_at(source)}{where}{err}") from err


def _at(source: str) -> str:
    """The message's `<file>: ` prefix; none for a block checked inside another (its file is named outside)."""
    return f"{source}: " if source else ""


def check_finite(config: Any, block: str) -> None:
    """Raise ValueError naming `block.field` for any float field of a dataclass that is NaN or ±inf
    (λ = inf once ran a search that hung; every range check below a finite one assumes it)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{block} `{f.name}` must be a finite number, got {value}")


def to_dict(config: Any) -> dict:
    """The resolved config as plain data (for logs, HDF5 attributes and checkpoints)."""
    return dataclasses.asdict(config)


def _convert(value: Any, hint: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, source=source, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(source)}`{key}` must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(v, item, source, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_at(source)}`{key}` must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return origin(_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_at(source)}`{key}` must be a finite number, got {value}")
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{_at(source)}`{key}` must be {hint.__name__}, got {value!r}")
    return value
