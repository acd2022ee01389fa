"""Where does the frozen LM keep the soft value? Linear probes of the tree's V̂ from each layer.

    python benchmarks/value_probe.py --buffer data/buffers/recipe.h5 --head checkpoints/heads/soft_ahead_lam15

The hybrid's head reads only the LM's final hidden state, and on unseen windows its Q_φ came out
nearly flat (BENCHMARKS.md, amortisation). This asks whether the information is there at all.

Targets: every distinct tree node s (depth ≥ 1) on the buffer's trajectories with at least
`--min-visits` visits, valued by its Monte-Carlo soft value V̂(s) (a node of one visit is valued
by its one rollout's reward). Both the target and the features are demeaned per prompt and depth
(the within-group estimator): the hybrid's offset supplies the level, so what the head must
supply is the difference between states of one prompt at one depth, e.g. between siblings.

Features: the LM's hidden state at s after layer l (0 = token embeddings; the last one is the
final, normed state the head reads). For each layer a ridge probe is fit on the training prompts
(the trainer's split: the same key hash and `--val-fraction`), its penalty chosen by 5-fold
cross-validation grouped by prompt, and scored on the validation prompts:

    R² = 1 − Σ (y − ŷ)² / Σ y²,   y and ŷ demeaned per (prompt, depth),

overall, by node depth, and on the terminal nodes alone (finished forecasts, whose V̂ = r(x) is
exact and a deterministic function of the state: no Monte-Carlo noise bounds R² there).

A reward-aware feature is scored beside them: the partial reward R(s) (`ForecastReward.partial`:
the spectral reward of the last H − k context values followed by the k values s has completed),
so R(s_0) scores the context's own tail and R(x) = r(x) for a finished valid forecast. It is the
"forward-looking" energy of a partial state (Pan et al. 2023, FL-GFlowNets): a head that reads
it only has to learn the residual. "R(s) weighted by k/H" gives R one weight (and a level) per
eighth of the horizon's values completed, plus one for finished forecasts: what a head could gain
from a learned weight on R. The look-ahead reward R⁺(s) (`ForecastReward.ahead`) instead completes
the forecast with a seasonal-naive continuation and scores that: a guess at the finished
forecast's reward rather than a score of the context's tail. With `--head`, the trained head's
own prediction of V̂(s), Q_φ(parent, action), is scored the same way (no fit): the gap between it
and the probes is what a better head could gain from these features.

Writes `<out>/probe.csv`, `probe.md` and `probe.png`.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluation.value_nodes import Nodes, collect
from sadt.cli import CommandParser, run_command

ROOT_DIR = Path(__file__).resolve().parents[1]

DEPTH_BUCKETS = [(1, 4), (5, 12), (13, 24), (25, 10_000)]
ALPHAS = [10.0**k for k in range(-1, 6)]
SHARE_BINS = 8  # "R(s) weighted by k/H": one weight (and level) per eighth of the horizon completed, and finished












def demean_by(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """values − their group's mean, row-wise (values (N, ...), groups (N,))."""
    from scipy.sparse import csr_matrix

    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    indicator = csr_matrix((np.ones(len(groups)), (inverse, np.arange(len(groups)))))  # (G, N)
    flat = values.reshape(len(groups), -1)
    means = (indicator @ flat) / counts[:, None]
    return (flat - means[inverse]).reshape(values.shape)


def r_squared(y: np.ndarray, prediction: np.ndarray) -> float:
    return float(1.0 - np.sum((y - prediction) ** 2) / np.sum(y**2))


def fit_probe(x: np.ndarray, y: np.ndarray, prompts: np.ndarray, folds: int = 5) -> tuple[np.ndarray, float]:
    """Ridge weights, argmin |y − x w|² + α |w|², with α chosen by cross-validation over folds of whole prompts.

    Each fold's Gram matrix is computed once; a fold's training Gram is the total minus its own.
    """
    fold_of = {g: i % folds for i, g in enumerate(np.unique(prompts))}
    fold = np.array([fold_of[g] for g in prompts])
    grams = [(x[fold == f].T @ x[fold == f], x[fold == f].T @ y[fold == f]) for f in range(folds)]
    gram, moment = sum(g for g, _ in grams), sum(m for _, m in grams)
    eye = np.eye(x.shape[1])
    scores = []
    for alpha in ALPHAS:
        error = 0.0
        for f, (g, m) in enumerate(grams):
            w = np.linalg.solve(gram - g + alpha * eye, moment - m)
            error += float(np.sum((y[fold == f] - x[fold == f] @ w) ** 2))
        scores.append(error)
    alpha = ALPHAS[int(np.argmin(scores))]
    return np.linalg.solve(gram + alpha * eye, moment), alpha


def probe_table(nodes: Nodes, layers: list[int]) -> list[dict]:
    """R² on validation prompts per layer (and the head), overall and by depth bucket."""
    groups = nodes.prompt * 10_000 + nodes.depth  # (prompt, depth)
    y = demean_by(nodes.value, groups)
    train, val = ~nodes.is_val, nodes.is_val

    def scores(name: str, prediction: np.ndarray, alpha: float | None, train_r2: float | None) -> dict:
        row = {"features": name, "alpha": alpha, "train_r2": train_r2, "val_r2": r_squared(y[val], prediction),
               "val_nodes": int(val.sum())}
        for lo, hi in DEPTH_BUCKETS:
            in_bucket = (nodes.depth[val] >= lo) & (nodes.depth[val] <= hi)
            row[f"val_r2_depth_{lo}_{hi}"] = r_squared(y[val][in_bucket], prediction[in_bucket]) \
                if in_bucket.sum() > 1 else float("nan")
        terminal = nodes.terminal[val]
        row["val_r2_terminal"] = r_squared(y[val][terminal], prediction[terminal])
        return row

    def probe(name: str, features: np.ndarray) -> dict:
        x = demean_by(features, groups)
        x = x / (x[train].std(axis=0) + 1e-6)  # standardised on the training prompts
        w, alpha = fit_probe(x[train], y[train], nodes.prompt[train])
        row = scores(name, x[val] @ w, alpha, r_squared(y[train], x[train] @ w))
        print(f"{name}: val R² {row['val_r2']:.3f} (train {row['train_r2']:.3f}, α {alpha:g})", flush=True)
        return row

    rows = [probe(f"layer {layer}", nodes.features[:, j]) for j, layer in enumerate(layers)]
    rows.append(probe("partial reward R(s)", nodes.partial_reward[:, None]))
    bins = np.eye(SHARE_BINS + 1)[np.floor(nodes.completed * SHARE_BINS).astype(int)]  # (N, 9) one-hot of k/H
    rows.append(probe("R(s) weighted by k/H", np.hstack([nodes.partial_reward[:, None] * bins, bins])))
    rows.append(probe("look-ahead reward R⁺(s)", nodes.ahead_reward[:, None]))
    rows.append(probe("R⁺(s) weighted by k/H", np.hstack([nodes.ahead_reward[:, None] * bins, bins])))
    rows.append(probe(f"layer {layers[-1]} + R(s)", np.hstack([nodes.features[:, -1], nodes.partial_reward[:, None]])))
    if np.isfinite(nodes.head_q).all():
        q = demean_by(nodes.head_q, groups)
        rows.append(scores("trained head Q_φ", q[val], None, r_squared(y[train], q[train])))
    return rows


def write_outputs(rows: list[dict], out: Path, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    buckets = [f"{lo}-{hi}" if hi < 10_000 else f"{lo}+" for lo, hi in DEPTH_BUCKETS]
    columns = ["features", "val R²"] + [f"depth {b}" for b in buckets] + ["terminal", "train R²", "α"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        depth = " | ".join(f"{r[f'val_r2_depth_{lo}_{hi}']:.3f}" for lo, hi in DEPTH_BUCKETS)
        alpha = "—" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append(f"| {r['features']} | {r['val_r2']:.3f} | {depth} | {r['val_r2_terminal']:.3f} "
                     f"| {r['train_r2']:.3f} | {alpha} |")
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "probe.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer_rows = [r for r in rows if r["features"].startswith("layer ")]
    layers = [int(r["features"].split()[1]) for r in layer_rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(layers, [r["val_r2"] for r in layer_rows], "o-", color="k", label="all depths")
    for lo, hi in DEPTH_BUCKETS:
        label = f"depth {lo}-{hi}" if hi < 10_000 else f"depth {lo}+"
        ax.plot(layers, [r[f"val_r2_depth_{lo}_{hi}"] for r in layer_rows], ".--", alpha=0.7, label=label)
    head = [r for r in rows if r["features"] == "trained head Q_φ"]
    if head:
        ax.axhline(head[0]["val_r2"], color="tab:red", lw=1, label="trained head Q_φ (all depths)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("R² of V̂ within (prompt, depth), validation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffer", nargs="+", required=True, help="harvested HDF5 buffers")
    parser.add_argument("--head", help="a trained head directory, scored beside the probes")
    parser.add_argument("--layers", type=int, nargs="+", help="layers to probe (default: every 3rd and the last)")
    parser.add_argument("--min-visits", type=int, default=1, help="keep nodes with at least this many visits")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="as the fit config's data.val_fraction")
    parser.add_argument("--batch", type=int, default=32, help="trajectories per LM forward")
    parser.add_argument("--out", default="benchmarks/results/value_probe")
    args = parser.parse_args(argv)

    from sadt.codec import Codec
    from sadt.config import to_dict
    from sadt.head_io import load_value_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from trainers.data import BufferDataModule

    torch.manual_seed(0)
    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    n_layers = lm.model.config.num_hidden_layers
    layers = args.layers or sorted(set(range(0, n_layers + 1, 3)) | {n_layers})
    if min(layers) < 0 or max(layers) > n_layers:
        raise ValueError(f"--layers must lie in 0..{n_layers}, got {layers}")
    head = load_value_head(args.head, lm_fingerprint(), to_dict(codec.config))[0] if args.head else None
    data = BufferDataModule(args.buffer, val_fraction=args.val_fraction, lm_fingerprint=lm_fingerprint())
    data.setup()
    items = list(data.train_set.items) + list(data.val_set.items)
    val_ids = {x["prompt_id"] for x in data.val_set.items}
    start = time.perf_counter()
    nodes = collect(lm, codec, items, val_ids, layers, head, data.meta, args.min_visits, args.batch)
    if head is not None and head.config.shaped:  # Q_φ(s_t, a_t) ≈ residual + β(k/H)·R⁺(s_{t+1}) (R⁺ᵈ not rebuilt)
        r = nodes.ahead_reward
        weighted = head.weigh_reward(torch.as_tensor(r), torch.as_tensor(nodes.completed))
        nodes.head_q = nodes.head_q + weighted.detach().double().numpy()
    print(f"{len(nodes.value)} nodes ({int(nodes.is_val.sum())} on {len(val_ids)} validation prompts), "
          f"LM {time.perf_counter() - start:.0f} s", flush=True)
    rows = probe_table(nodes, layers)
    header = (f"Buffers {', '.join(args.buffer)}; nodes with ≥ {args.min_visits} visits: {len(nodes.value)} "
              f"({int((~nodes.is_val).sum())} train, {int(nodes.is_val.sum())} validation on {len(val_ids)} prompts); "
              f"head {args.head or '—'}.")
    write_outputs(rows, Path(args.out), header)
    print((Path(args.out) / "probe.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
