"""What a buffer's trajectories mean: the settings a resume or a merge must share (`data.buffer`).

A buffer's `meta` attribute holds the harvest's settings. Two buffers whose defining settings differ hold
trajectories of different tasks, codecs, rewards or actions, which must not be mixed; settings of how they
were produced may differ between a buffer's runs and shards.
"""

from __future__ import annotations

import json

# Meta keys (dotted paths into the meta dict) that define what a buffer's trajectories mean: which task an
# index names (the task set), how numbers are written (codec), what was scored (reward, λ) and what an
# action is. Settings of how they were produced (device, shard, search budget, `generated`, which only
# extends the task set) may differ between a buffer's runs and shards.
DEFINING_SETTINGS = (
    "lam", "gamma", "task", "n_actions", "grammar", "action_token_ids", "codec", "config.codec", "config.reward",
    "config.series", "config.context_length", "config.horizon", "config.windows_per_series", "config.seeds",
    "config.generator_seed", "config.sampler",
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Defining settings added after buffers were written, with the value that a meta lacking one was written under.
ADDED_SETTINGS = {"config.reward.record_penalty": 0.0}


def defining_settings(meta: dict) -> dict[str, object]:
    """The settings of `DEFINING_SETTINGS` that `meta` holds, flattened to dotted keys (a setting added later,
    `ADDED_SETTINGS`, at the value it had before it existed)."""
    flat = {**ADDED_SETTINGS, **_flatten(meta)}
    return {key: value for key, value in flat.items()
            if any(key == d or key.startswith(d + ".") for d in DEFINING_SETTINGS)}


def first_difference(a: dict, b: dict) -> tuple[str, str, str] | None:
    """The first defining setting (sorted by key) in which metas `a` and `b` differ, as `(key, a's value,
    b's value)` shown as JSON ("(unset)" where one lacks it); None when they agree."""
    left, right = defining_settings(a), defining_settings(b)
    for key in sorted(left.keys() | right.keys()):
        if left.get(key) != right.get(key):
            return key, _show(left.get(key)), _show(right.get(key))
    return None


def _show(value: object) -> str:
    text = json.dumps(value) if value is not None else "(unset)"
    return text if len(text) <= 60 else text[:57] + "..."
