"""A budget-free reference for the amortisation benchmark: π*'s mean reward and log Z by importance sampling.

    python benchmarks/target_reference.py --config benchmarks/configs/amortisation_lam15_soft.yaml --prior-samples 256

MC-only at the largest budget is a moving reference: if 200 rollouts barely tilt the samples
away from the prior, "the hybrid matches MC@200" says nothing about π*. Here each held-out window
of the config gets N forecasts x_i ~ p(x|c) (base sampling; no search, no head) and, with
w_i = exp(λ r(x_i)),

    V_IS = (1/λ) log (1/N) Σ_i w_i            (the root's soft value, log Z / λ; consistent as N grows)
    E_π*[r] ≈ Σ_i w_i r(x_i) / Σ_i w_i        (self-normalised; ESS = (Σ w)² / Σ w² says how far to trust it)

Against these, every MC-only and hybrid row of the config's `real.csv` is scored by the share of
the prior-to-π* reward gap its samples close, (r̄ − E_p[r]) / (E_π*[r] − E_p[r]) as a ratio of means
over windows, and by its root value's error |V̂(root) − V_IS|; each hybrid row is also compared with
MC-only at the same budget and sampler, window by window. Writes `<output_dir>/target.csv`
(per window) and `target.md` (per method, with bootstrap 95% intervals over windows).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.amortisation import AmortisationConfig
from benchmarks.evaluation.amortisation_real import RealPart, heldout_windows
from benchmarks.evaluation.tables import read_typed_rows, write_csv
from sadt.cli import CommandParser, run_command
from sadt.config import load_config
from sadt.importance import importance_summary

ROOT_DIR = Path(__file__).resolve().parents[1]


def importance_reference(rewards: np.ndarray, lam: float) -> dict:
    """V_IS, E_π*[r] (self-normalised), E_p[r] and the ESS from prior samples' rewards (float64): the
    proposal is p itself, so log w = λ r (`sadt.importance.importance_summary`)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size < 2 or not np.isfinite(r).all():
        raise ValueError(f"need a 1-D array of >= 2 finite rewards, got shape {r.shape}")
    summary = importance_summary(lam * r, r, lam)
    return {"value_is": summary["value_is"], "target_reward": summary["target_reward"],
            "prior_reward": summary["proposal_reward"], "ess": summary["ess_fraction"] * r.size}


def score_rows(rows: list[dict], references: dict[str, dict], rng: np.random.Generator,
               n_boot: int = 2000) -> list[dict]:
    """Per search method: the share of the prior-to-π* reward gap closed and |V̂(root) − V_IS|, means over
    the windows that have a reference, with bootstrap 95% intervals over windows."""
    windows = [w for w in dict.fromkeys(r["series"] for r in rows) if w in references]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["curve"] or r["method"] == "base sampling"))
    by = {(r["series"], r["method"]): r for r in rows}
    prior = np.array([references[w]["prior_reward"] for w in windows])
    gap = np.array([references[w]["target_reward"] for w in windows]) - prior
    value = np.array([references[w]["value_is"] for w in windows])
    out = []
    for method in methods:
        present = [i for i, w in enumerate(windows) if (w, method) in by]
        if not present:
            continue
        idx = np.array(present)
        gain = np.array([by[windows[i], method]["reward"] for i in present]) - prior[idx]
        bias = np.array([by[windows[i], method]["root_value"] for i in present]) - value[idx]
        bias_is = np.array([by[windows[i], method].get("root_value_is", np.nan) for i in present]) - value[idx]
        error = np.abs(bias)
        boot = rng.integers(0, len(idx), (n_boot, len(idx)))
        shares = gain[boot].mean(1) / gap[idx][boot].mean(1)
        errors = error[boot].mean(1)
        out.append({
            "method": method, "windows": len(idx), "reward_gain": float(gain.mean()),
            "target_gain": float(gap[idx].mean()), "share_closed": float(gain.mean() / gap[idx].mean()),
            "share_low": float(np.percentile(shares, 2.5)), "share_high": float(np.percentile(shares, 97.5)),
            "root_error": float(error.mean()), "root_error_low": float(np.percentile(errors, 2.5)),
            "root_error_high": float(np.percentile(errors, 97.5)),
            "root_bias": float(bias.mean()),  # NaN where a row has no root value (base sampling) or, below, no
            "is_estimate_bias": float(bias_is.mean()),  # importance-sampling estimate (runs before root_value_is)
            "is_estimate_error": float(np.abs(bias_is).mean()),
        })
    return out


def equal_budget_differences(rows: list[dict], references: dict[str, dict], rng: np.random.Generator,
                             n_boot: int = 2000) -> list[dict]:
    """For every `hybrid@b<suffix>` row label with a `maxent_ts@b<suffix>` twin (same budget, same
    sampler): hybrid − MC-only per window in mean reward and in the IS root estimate's error
    |V_IS(draws) − V_IS(reference)|, means over the windows that have both and a reference, with
    bootstrap 95% intervals over windows. Negative error differences favour the hybrid."""
    by = {(r["series"], r["method"]): r for r in rows}
    windows = [w for w in dict.fromkeys(r["series"] for r in rows) if w in references]
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"].startswith("hybrid@")):
        twin = "maxent_ts@" + method.removeprefix("hybrid@")
        present = [w for w in windows if (w, method) in by and (w, twin) in by]
        if not present:
            continue
        pair = [(by[w, method], by[w, twin], references[w]["value_is"]) for w in present]
        reward = np.array([h["reward"] - m["reward"] for h, m, _ in pair])
        error = np.array([abs(h.get("root_value_is", np.nan) - v) - abs(m.get("root_value_is", np.nan) - v)
                          for h, m, v in pair])
        boot = rng.integers(0, len(present), (n_boot, len(present)))
        out.append({"hybrid": method, "mc_only": twin, "windows": len(present),
                    "reward_diff": float(reward.mean()),
                    "reward_diff_ci": tuple(np.percentile(reward[boot].mean(1), [2.5, 97.5])),
                    "is_error_diff": float(error.mean()),
                    "is_error_diff_ci": tuple(np.percentile(error[boot].mean(1), [2.5, 97.5]))})
    return out


def sample_references(config: RealPart, n_prior: int, batch_size: int, seed: int) -> list[dict]:
    """`importance_reference` of n_prior base-model forecasts on each held-out window of the config."""
    from sadt.codec import Codec
    from sadt.lm.base_model import load_base_lm
    from search.ancestral import sample_prior
    from search.forecast_task import ForecastTask

    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    windows = [w for name in config.series for w in heldout_windows(name, config)]
    references = []
    for label, context, _ in tqdm(windows, desc="prior samples", unit="window"):
        task = ForecastTask.build(codec, context, config.horizon)
        start = time.perf_counter()
        samples, _ = sample_prior(lm, task, n_samples=n_prior, batch_size=batch_size, seed=seed, progress=False)
        reference = importance_reference(task.reward_fn(samples), config.lam)
        references.append({"series": label, "n_prior": n_prior, "lam": config.lam, **reference,
                           "wall_s": time.perf_counter() - start})
        tqdm.write(f"{label:17s} V_IS {reference['value_is']:7.3f}  E_π*[r] {reference['target_reward']:7.3f}  "
                   f"E_p[r] {reference['prior_reward']:7.3f}  ESS {reference['ess']:6.1f}/{n_prior}")
    return references


def summary(references: list[dict], scores: list[dict], header: str, differences: list[dict] = ()) -> str:
    lines = [header, "", "| window | E_p[r] | E_π*[r] (SNIS) | V_IS = log Z / λ | ESS |", "|---|---|---|---|---|"]
    for r in references:
        lines.append(f"| {r['series']} | {r['prior_reward']:.3f} | {r['target_reward']:.3f} | {r['value_is']:.3f} | "
                     f"{r['ess']:.1f} / {int(r['n_prior'])} |")
    lines += ["", "| method | windows | reward − E_p[r] | share of the gap to E_π*[r] closed (95% CI) | "
              "V̂(root) error vs V_IS (95% CI) | V̂(root) bias | IS root estimate: error | bias |",
              "|---|---|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['method']} | {s['windows']} | {s['reward_gain']:+.3f} | {s['share_closed']:.2f} "
                     f"[{s['share_low']:.2f}, {s['share_high']:.2f}] | {s['root_error']:.3f} "
                     f"[{s['root_error_low']:.3f}, {s['root_error_high']:.3f}] | {s['root_bias']:+.3f} | "
                     f"{s['is_estimate_error']:.3f} | {s['is_estimate_bias']:+.3f} |")
    if differences:
        lines += ["", "Equal budget, same sampler: hybrid − MC-only per window (bootstrap 95% CI over windows; a "
                  "negative IS error difference favours the hybrid).", "",
                  "| hybrid | MC-only | windows | reward difference | IS root estimate: error difference |",
                  "|---|---|---|---|---|"]
        for d in differences:
            cells = [f"{d[k]:+.3f} [{d[k + '_ci'][0]:+.3f}, {d[k + '_ci'][1]:+.3f}]" if np.isfinite(d[k]) else "—"
                     for k in ("reward_diff", "is_error_diff")]  # — : rows run before root_value_is existed
            lines.append(f"| {d['hybrid']} | {d['mc_only']} | {d['windows']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT_DIR / "benchmarks/configs/amortisation_lam15_soft.yaml")
    parser.add_argument("--prior-samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="the prior draws' seed (base sampling rows use 0)")
    parser.add_argument("--summarise", action="store_true", help="rebuild target.md from target.csv")
    args = parser.parse_args(argv)
    config = load_config(args.config, AmortisationConfig)
    out = Path(config.output_dir)
    rows_path = out / "real.csv"
    if not rows_path.is_file():
        parser.error(f"no {rows_path}: run benchmarks/amortisation.py --config {args.config} --part real first")
    if args.summarise:
        references = read_typed_rows(out / "target.csv")
    else:
        references = sample_references(config.real, args.prior_samples, args.batch_size, args.seed)
        write_csv(out / "target.csv", references)
    rows, by_window = read_typed_rows(rows_path), {r["series"]: r for r in references}
    scores = score_rows(rows, by_window, np.random.default_rng(0), config.real.bootstrap)
    differences = equal_budget_differences(rows, by_window, np.random.default_rng(0), config.real.bootstrap)
    header = f"# π* reference by importance sampling ({time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv)}`)"
    (out / "target.md").write_text(summary(references, scores, header, differences))
    print((out / "target.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
