"""The forward-KL scan's summary: means and intervals per head, split and scale; s chosen on validation prompts only."""


import numpy as np
import pytest

from benchmarks.evaluation.kl_scan_stats import best_scales, paired_differences, summarise, with_common_validation
from benchmarks.forward_kl_scan import ScanConfig, report


def synthetic_rows() -> list[dict]:
    """Head "a" is best at s = 0.5 on validation prompts but at s = 1 on training ones (it over-fits)."""
    rng = np.random.default_rng(0)
    truth = {("a", "train"): {0.5: -0.2, 1.0: -0.4}, ("a", "val"): {0.5: -0.1, 1.0: 0.2},
             ("b", "train"): {0.5: 0.1, 1.0: 0.3}, ("b", "val"): {0.5: 0.05, 1.0: 0.0}}
    return [{"head": h, "split": split, "prompt": f"p{i}", "guide_scale": s, "forward_kl": m + 0.01 * rng.normal()}
            for (h, split), means in truth.items() for s, m in means.items() for i in range(8)]


def test_summary_means_and_intervals_per_head_split_and_scale():
    scores = summarise(synthetic_rows(), 500, np.random.default_rng(1))
    assert len(scores) == 8 and all(s["prompts"] == 8 for s in scores)
    a_val_1 = next(s for s in scores if (s["head"], s["split"], s["guide_scale"]) == ("a", "val", 1.0))
    assert a_val_1["mean"] == pytest.approx(0.2, abs=0.01) and a_val_1["low"] < a_val_1["mean"] < a_val_1["high"]


def test_the_scale_is_chosen_on_validation_prompts_never_training_ones():
    scores = summarise(synthetic_rows(), 200, np.random.default_rng(1))
    assert best_scales(scores) == {"a": 0.5, "b": 1.0}
    assert "a s = 0.5, b s = 1" in report(scores, "# scan")


def test_bad_scan_config_is_named():
    with pytest.raises(ValueError, match="guide_scales"):
        ScanConfig(guide_scales=[0.0, 1.0])
    with pytest.raises(ValueError, match="head"):
        ScanConfig(heads={})
    with pytest.raises(ValueError, match="prompts"):
        ScanConfig(prompts="some")
    with pytest.raises(ValueError, match="trained_on.*'other'"):
        ScanConfig(heads={"a": "x"}, trained_on={"other": ["b.h5"]})


def test_heads_fitted_on_different_prompts_are_compared_on_the_prompts_none_trained_on():
    # Head "a" trained on p0, p1; head "b" on p1, p2: only p3 is unseen by both.
    trained = {"a": {"p0", "p1"}, "b": {"p1", "p2"}}
    rows = [{"head": h, "split": "train" if f"p{i}" in seen else "val", "prompt": f"p{i}", "guide_scale": 1.0,
             "forward_kl": i + (0.5 if h == "b" else 0.0)} for h, seen in trained.items() for i in range(4)]
    rows = with_common_validation(rows)
    common = [r for r in rows if r["split"] == "common_val"]
    assert sorted((r["head"], r["prompt"]) for r in common) == [("a", "p3"), ("b", "p3")]
    assert with_common_validation(rows) == rows  # recomputed, never stacked (a resumed scan re-derives it)
    means = {(s["head"], s["split"]): s["mean"] for s in summarise(rows, 50, np.random.default_rng(0))}
    assert means[("a", "val")] == 2.5 and means[("b", "val")] == 2.0 and means[("a", "common_val")] == 3.0
    # b − a on the common prompt p3 only (3.5 − 3.0), not on either head's own validation prompts.
    (diff,) = paired_differences(rows, 50, np.random.default_rng(0))
    assert (diff["head"], diff["reference"], diff["prompts"], diff["mean"]) == ("b", "a", 1, 0.5)
    assert "each head minus a" in report(summarise(rows, 50, np.random.default_rng(0)), "# scan", [diff])
