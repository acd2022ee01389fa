"""The amortisation benchmark's exact part: MC-only MaxEnt-TS against the hybrid on the enumerable toy
(`benchmarks/amortisation.py --part toy`), total variation to π* and the root value's error, exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluation.amortisation_stats import budget_reaching
from benchmarks.evaluation.tables import write_csv
from search.config import search_config


@dataclass(frozen=True)
class ToyPart:
    lam: float = 2.0
    length: int = 5  # actions per sequence: 3**length terminals, all enumerated
    exact_head: bool = True  # also the hybrid with the exact soft values as its head
    budgets: list[int] = field(default_factory=lambda: [20, 40, 80, 160, 320, 640, 1280])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    train_rollouts: int = 1000  # the MC-only search whose trajectories train the toy head
    train_steps: int = 1500
    hybrid_n0: list[float] = field(default_factory=lambda: [1.0, 10.0])  # α = n0 / (n0 + N)
    hybrid_offset: list[bool] = field(default_factory=lambda: [False, True])  # SearchConfig.hybrid_offset


def train_toy_head(toy, lam: float, rollouts: int, steps: int):
    """An MLP head trained with TB + DB on the trajectories of one MC-only search (seed 100).

    TB alone fixes P_F^φ but leaves Q_φ(s, ·) free up to a constant per state (V_φ moves with it),
    while the hybrid mixes Q_φ with Monte-Carlo values in absolute terms: DB's residual
    `λ (Q_φ(s_t, a_t) − V_φ(s_{t+1}))` (and `Q_φ = r` at the end) pins the level.
    """
    from benchmarks.evaluation.exact import ACTION_IDS, PROMPT
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead
    from sadt.losses import detailed_balance, trajectory_balance

    torch.manual_seed(0)
    view = toy.search(lam, rollouts, seed=100).tree.trajectories()
    sequences = [a.tolist() for a in view.split("actions")]
    prompt = toy.lm.prefill(PROMPT)
    hidden, logits = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in sequences], ACTION_IDS)
    hidden, log_prior = hidden[:, :-1].float(), torch.log_softmax(logits[:, :-1], dim=-1).float()
    actions, reward = torch.tensor(sequences), torch.tensor(view.rewards, dtype=torch.float32)
    mask = torch.ones_like(actions, dtype=torch.bool)
    head = MLPFlowHead(toy.lm.head.weight[ACTION_IDS].float(), FlowHeadConfig(hidden=64))
    optimiser = torch.optim.Adam([
        {"params": [p for n, p in head.named_parameters() if not n.startswith("log_z")], "lr": 1e-2},
        {"params": head.log_z_mlp.parameters(), "lr": 3e-2},
    ])
    for _ in range(steps):
        optimiser.zero_grad()
        args = (head.q(hidden), log_prior, actions, mask, head.log_z(hidden[:, 0]), reward, lam)
        (trajectory_balance(*args) + detailed_balance(*args)).mean().backward()
        optimiser.step()
    head.eval().requires_grad_(False)
    return lambda h: head.q(h.float()).double(), len(sequences)


def toy_head_q(toy, head) -> np.ndarray:
    """Q_φ at every state of every sequence, (S, L, A)."""
    from benchmarks.evaluation.exact import ACTION_IDS, PROMPT

    prompt = toy.lm.prefill(PROMPT)
    hidden, _ = toy.lm.path_states(prompt, [[ACTION_IDS[a] for a in s] for s in toy.sequences], ACTION_IDS)
    with torch.no_grad():
        return head(hidden[:, :-1]).double().numpy()


def run_toy(config: ToyPart, out: Path) -> list[dict]:
    from benchmarks.evaluation.exact import (
        ExactHead,
        Toy,
        policy_step_log_probs,
        resample_distribution,
        search_sampler_distribution,
        total_variation,
        tree_distribution,
    )
    from search.tree_search import TreeSearch

    toy, lam = Toy(length=config.length), config.lam
    target, exact_root = toy.target(lam)
    trained, n_traj = train_toy_head(toy, lam, config.train_rollouts, config.train_steps)
    trained_completion = policy_step_log_probs(toy, lam, toy_head_q(toy, trained))
    variants = {"MC-only": (None, policy_step_log_probs(toy, lam), 0.0, False)}
    for offset in config.hybrid_offset:
        for n0 in config.hybrid_n0:
            label = f"hybrid n0={n0:g}{', offset' if offset else ''}, TB+DB head ({n_traj} traj.)"
            variants[label] = (trained, trained_completion, n0, offset)
    if config.exact_head:
        variants["hybrid n0=10, exact head"] = (ExactHead(toy, lam), policy_step_log_probs(toy, lam, toy.exact_q(lam)),
                                                10.0, False)
    share = reward_share(toy.table, np.exp(toy.log_p), target)
    rows = []
    for name, (head, completion, n0, offset) in variants.items():
        for budget in config.budgets:
            for seed in config.seeds:
                config_at = search_config(
                    lam=lam, n_rollouts=budget, batch_size=8, seed=seed, progress=False, sampling="search",
                    hybrid="visits" if head is not None else "off", hybrid_n0=n0, hybrid_offset=offset,
                )
                search = TreeSearch(toy.lm, toy.problem, config_at, head)
                root_is = search.run().root_value_is
                by_search, in_tree = search_sampler_distribution(search, toy, completion), tree_distribution(search)
                resampled = resample_distribution(search, toy)
                rows.append({
                    "variant": name, "rollouts": budget, "seed": seed,
                    "tv_search_sampler": total_variation(by_search, target),
                    "tv_tree_sampler": total_variation(in_tree, target),
                    "root_error": abs(float(search.tree.value[0]) - exact_root),
                    "root_bias": float(search.tree.value[0]) - exact_root, "root_bias_is": root_is - exact_root,
                    "share_search_sampler": share(by_search), "share_tree_sampler": share(in_tree),
                    "tv_resampled": total_variation(resampled, target), "share_resampled": share(resampled),
                })
        print(f"toy: {name} done", flush=True)
    write_csv(out / "toy.csv", rows)
    plot_toy(rows, out / "toy.png", config.length)
    return rows


def reward_share(reward: np.ndarray, prior: np.ndarray, target: np.ndarray):
    """q ↦ (E_q[r] − E_p[r]) / (E_π*[r] − E_p[r]), exactly, for distributions over every sequence:
    0 for the prior, 1 for π*."""
    prior_reward = float(prior @ reward)
    gap = float(target @ reward) - prior_reward
    return lambda q: (float(q @ reward) - prior_reward) / gap


def plot_toy(rows: list[dict], path: Path, length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("tv_search_sampler", "TV to π* (sampling: search)"), ("tv_tree_sampler", "TV to π* (in-tree sampler)"),
               ("root_error", "|V̂(root) − V(root)|"),
               ("share_search_sampler", "share of E_p→E_π* reward gap (search)"),
               ("share_tree_sampler", "share of E_p→E_π* reward gap (in-tree)"),
               ("share_resampled", "share of E_p→E_π* reward gap (resampled)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
    for ax, (key, label) in zip(axes, metrics):
        log_axis = not key.startswith("share")
        for variant in dict.fromkeys(r["variant"] for r in rows):
            budgets = sorted({r["rollouts"] for r in rows if r["variant"] == variant})
            sel = [r for r in rows if r["variant"] == variant]
            values = np.array([[r[key] for r in sel if r["rollouts"] == b] for b in budgets])  # (budgets, seeds)
            if log_axis:
                values = np.maximum(values, 1e-9)  # the exact head's errors are ~1e-8: keep them on a log axis
            ax.plot(budgets, values.mean(1), marker="o", label=variant)
            ax.fill_between(budgets, values.min(1), values.max(1), alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log" if log_axis else "linear")
        ax.set_xlabel("rollouts")
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle(f"Exact toy (3 actions, length {length}): mean and min-max over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mc_equivalent(rows: list[dict], key: str, value: float) -> float:
    """The MC-only budget at which its mean `key` (falling with budget, e.g. TV) would equal `value`
    (log-log interpolation of its curve); MC-only's smallest budget if `value` is no better than it."""
    budgets = sorted({r["rollouts"] for r in rows if r["variant"] == "MC-only"})
    curve = np.array([np.mean([r[key] for r in rows if r["variant"] == "MC-only" and r["rollouts"] == b])
                      for b in budgets])
    return budget_reaching(budgets, -np.log(curve), -np.log(value))


def toy_summary(rows: list[dict]) -> str:
    """Per variant and budget, mean ± sd over seeds; `share`: (E_q[r] − E_p[r]) / (E_π*[r] − E_p[r])."""
    keys = ("tv_search_sampler", "tv_tree_sampler", "tv_resampled", "root_error", "root_bias", "root_bias_is",
            "share_search_sampler", "share_tree_sampler", "share_resampled")
    lines = ["| variant | rollouts | TV (sampling: search) | MC-only budget with this TV | TV (in-tree) | "
             "TV (resampled) | root error | root bias: V̂ | root bias: IS | share (search) | share (in-tree) | "
             "share (resampled) |",
             "|---" * 12 + "|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for budget in sorted({r["rollouts"] for r in rows}):
            sel = [r for r in rows if r["variant"] == variant and r["rollouts"] == budget]
            tv, tree_tv, resampled_tv, root, bias, bias_is, share, tree_share, resampled_share = [
                f"{np.mean([r[k] for r in sel]):.3g} ± {np.std([r[k] for r in sel]):.2g}" for k in keys]
            equivalent = mc_equivalent(rows, "tv_search_sampler", np.mean([r["tv_search_sampler"] for r in sel]))
            ratio = f"{equivalent:.0f} ({equivalent / budget:.1f}x)" if np.isfinite(equivalent) else "> all"
            cells = [variant, budget, tv, ratio, tree_tv, resampled_tv, root, bias, bias_is, share, tree_share,
                     resampled_share]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)
