"""Every sampler's output at a fixed seed, on the enumerable toy and on the real base model: the record that a
behaviour-preserving redesign (issue 35) must reproduce. `tests/test_behaviour_unchanged.py` compares today's
runs with the record in `tests/golden/behaviour.json`; a change that is meant to alter behaviour rewrites it:

    python tests/behaviour.py            # both parts (the real one needs `make fetch`)

Per method: the samples, the root value, LM tokens and forward calls, and the draws' log-weights (MaxEnt-TS) or
the final particles' (SMC).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("golden") / "behaviour.json"
TOY_LAM = 2.0
TREE_METHODS = ("maxent_ts", "dts", "dts_star", "mcts_uct", "ancestral", "best_of_n", "greedy")
HEAD_RUNS = {"hybrid": {"method": "maxent_ts", "hybrid": "visits"}, "flow": {"method": "flow"},
             "twisted_smc": {"method": "twisted_smc"}}
REAL_RUNS = {"maxent_ts": {}, "maxent_ts ε=0": {"defensive": 0.0}, "dts": {"method": "dts"},
             "smc": {"method": "smc"}, "hybrid": {"hybrid": "visits"}, "twisted_smc": {"method": "twisted_smc"}}


def record(result) -> dict:
    """What a run must reproduce: samples, root value, NFE and the draws' (or particles') log-weights."""
    weights = getattr(result, "draw_log_weights", None)
    if weights is None:
        weights = result.log_weights
    return {"samples": [list(map(int, s)) for s in result.samples], "root_value": float(result.root_value),
            "nfe_tokens": int(result.nfe_tokens), "forward_calls": int(result.forward_calls),
            "log_weights": [float(w) for w in np.asarray(weights)]}


def toy_runs() -> dict[str, dict]:
    """Every method on the toy (length 5, λ 2, 24 rollouts in batches of 4, 6 samples, seed 3)."""
    from benchmarks.evaluation.exact import ExactHead, Toy
    from search.config import search_config
    from search.sampler import make_sampler

    toy = Toy()
    head = ExactHead(toy, TOY_LAM)
    runs = {method: {"method": method} for method in (*TREE_METHODS, "smc")} | HEAD_RUNS
    out = {}
    for name, settings in runs.items():
        config = search_config(**{"lam": TOY_LAM, "n_rollouts": 24, "batch_size": 4, "n_samples": 6, "seed": 3,
                                 "progress": False, **settings})
        toy.lm.stats.reset()
        sampler = make_sampler(toy.lm, toy.problem, config, head if config.needs_head else None)
        out[name] = record(sampler.run())
    return out


def real_runs() -> dict[str, dict]:
    """The recommended samplers on the base model: Wooly's first 24 values, 4 steps ahead, λ 15, 12 rollouts."""
    from data.series import load_builtin
    from sadt.codec import Codec
    from sadt.config import to_dict
    from sadt.head_io import load_value_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.config import RECOMMENDED_HEAD, search_config
    from search.forecast_task import ForecastTask

    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    head, _ = load_value_head(RECOMMENDED_HEAD, lm_fingerprint(), to_dict(codec.config))
    task = ForecastTask.build(codec, load_builtin("Wooly").context[:24], 4)
    out = {}
    for name, settings in REAL_RUNS.items():
        config = search_config(**{"lam": 15.0, "n_rollouts": 12, "batch_size": 4, "n_samples": 4, "seed": 1,
                                 "progress": False, **settings})
        lm.stats.reset()
        out[name] = record(task.search(lm, config, head if config.needs_head else None))
    return out


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"toy": toy_runs(), "real": real_runs()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
