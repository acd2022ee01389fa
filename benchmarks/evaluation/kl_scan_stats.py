"""The forward-KL scan's statistics: per head, split and guide scale, the mean KL(π*‖P_F^s) − KL(π*‖p) over prompts
with a bootstrap interval, the paired differences between heads on the prompts they share, and each head's best s."""

from __future__ import annotations

import numpy as np


def with_common_validation(rows: list[dict]) -> list[dict]:
    """`rows` plus, split "common_val", the rows of the prompts that are "val" for every head."""
    rows = [r for r in rows if r["split"] != "common_val"]
    heads = set(r["head"] for r in rows)
    val_heads: dict[str, set[str]] = {}
    for r in rows:
        if r["split"] == "val":
            val_heads.setdefault(r["prompt"], set()).add(r["head"])
    common = {prompt for prompt, named in val_heads.items() if named == heads}
    return rows + [{**r, "split": "common_val"} for r in rows if r["prompt"] in common and r["split"] == "val"]


def summarise(rows: list[dict], n_boot: int, rng: np.random.Generator) -> list[dict]:
    """Mean over prompts and its bootstrap 95% interval, per head, split and s."""
    out = []
    for key in dict.fromkeys((r["head"], r["split"], r["guide_scale"]) for r in rows):
        values = np.array([r["forward_kl"] for r in rows if (r["head"], r["split"], r["guide_scale"]) == key])
        boot = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
        low, high = np.percentile(boot, [2.5, 97.5])
        out.append({"head": key[0], "split": key[1], "guide_scale": key[2], "prompts": len(values),
                    "mean": float(values.mean()), "low": float(low), "high": float(high)})
    return out


def paired_differences(rows: list[dict], n_boot: int, rng: np.random.Generator) -> list[dict]:
    """Each head minus the first head, per s, prompt by prompt over the "common_val" prompts, with a
    bootstrap 95% interval: heads fitted on different data, compared on the same unseen prompts."""
    common = [r for r in rows if r["split"] == "common_val"]
    heads = list(dict.fromkeys(r["head"] for r in common))
    value = {(r["head"], r["prompt"], r["guide_scale"]): r["forward_kl"] for r in common}
    out = []
    for head in heads[1:]:
        for scale in dict.fromkeys(r["guide_scale"] for r in common if r["head"] == head):
            prompts = [r["prompt"] for r in common if (r["head"], r["guide_scale"]) == (heads[0], scale)
                       and (head, r["prompt"], scale) in value]
            if not prompts:
                continue
            diff = np.array([value[head, q, scale] - value[heads[0], q, scale] for q in prompts])
            low, high = np.percentile(diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1), [2.5, 97.5])
            out.append({"head": head, "reference": heads[0], "guide_scale": scale, "prompts": len(prompts),
                        "mean": float(diff.mean()), "low": float(low), "high": float(high)})
    return out


def best_scales(scores: list[dict]) -> dict[str, float]:
    """Per head, the guide scale with the lowest validation mean (the rule for choosing s)."""
    val = [s for s in scores if s["split"] == "val"]
    return {head: min((s for s in val if s["head"] == head), key=lambda s: s["mean"])["guide_scale"]
            for head in dict.fromkeys(s["head"] for s in val)}
