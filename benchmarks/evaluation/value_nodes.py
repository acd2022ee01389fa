"""The value probe's data: well-visited tree nodes of a harvest, the LM's states of several layers at each, and the
soft values, partial rewards and head values the probe regresses on them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Nodes:
    """The probe's data set: one row per distinct tree node."""

    features: np.ndarray  # (N, L, H) hidden state after each probed layer
    head_q: np.ndarray  # (N,) the head's Q_φ(parent, action), NaN without a head
    partial_reward: np.ndarray  # (N,) R(s)
    ahead_reward: np.ndarray  # (N,) R⁺(s), the look-ahead reward
    completed: np.ndarray  # (N,) k/H, the share of the horizon's values that s has finished
    value: np.ndarray  # (N,) the tree's V̂(s)
    depth: np.ndarray  # (N,)
    terminal: np.ndarray  # (N,) bool: the trajectory's last state
    prompt: np.ndarray  # (N,) prompt id
    is_val: np.ndarray  # (N,) bool


def select_nodes(items: list[dict], min_visits: int) -> dict[int, list[tuple[np.ndarray, list[int]]]]:
    """Per prompt, the trajectories to run and, for each, the steps t whose node s_{t+1} is new and kept."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    chosen: dict[int, list[tuple[np.ndarray, list[int]]]] = defaultdict(list)
    for x in items:
        actions, keep = x["actions"], []
        for t in np.flatnonzero((x["visits"] >= min_visits) & np.isfinite(x["values"])):
            key = (x["prompt_id"], tuple(actions[: t + 1].tolist()))
            if key not in seen:
                seen.add(key)
                keep.append(int(t))
        if keep:
            chosen[x["prompt_id"]].append((x, keep))
    return chosen


@torch.inference_mode()
def layer_states(lm, prompt_ids: tuple[int, ...], paths: list[np.ndarray], action_ids: list[int], layers: list[int]):
    """Final hidden state at s_0..s_T and the probed layers' states at s_1..s_T of every path.

    Returns final (B, T+1, H) and per_layer (B, T, L, H) as float32 tensors.
    """
    prompt = lm.prefill(list(prompt_ids))
    ids_of = torch.as_tensor(action_ids)
    T = max(len(p) for p in paths)
    ids = torch.zeros(len(paths), T, dtype=torch.long)
    for i, p in enumerate(paths):
        ids[i, : len(p)] = ids_of[torch.as_tensor(p, dtype=torch.long)]
    positions = (prompt.length + torch.arange(T)).expand(len(paths), -1)
    out = lm.decoder(input_ids=ids, past_key_values=lm._prompt_cache(prompt, len(paths)), position_ids=positions,
                     use_cache=True, output_hidden_states=True)
    per_layer = torch.stack([out.hidden_states[layer] for layer in layers], dim=2)  # (B, T, L, H)
    final = torch.cat([prompt.hidden.expand(len(paths), 1, -1), out.last_hidden_state], dim=1)
    return final.float(), per_layer.float()


def partial_rewards(codec, reward, actions: np.ndarray, steps: list[int]) -> tuple[np.ndarray, ...]:
    """R(s_{t+1}) (`ForecastReward.partial`), R⁺(s_{t+1}) (`.ahead`) and the share k/H of values
    s_{t+1} has completed, per step t."""
    from sadt.partial_reward import completed_values

    done = [completed_values(codec, actions[: t + 1])[: reward.horizon] for t in steps]
    return reward.partial(done), reward.ahead(done), np.array([d.size / reward.horizon for d in done])


def collect(lm, codec, items: list[dict], val_ids: set[int], layers: list[int], head, meta: dict,
            min_visits: int, batch: int) -> Nodes:
    from sadt.config import from_dict
    from sadt.partial_reward import prompt_reward
    from sadt.rewards import RewardConfig

    chosen = select_nodes(items, min_visits)
    rows: dict[str, list] = defaultdict(list)
    action_ids = codec.action_token_ids
    for k, (prompt_id, trajectories) in enumerate(sorted(chosen.items())):
        prompt_tokens = trajectories[0][0]["prompt"]
        config = meta["config"]
        reward = prompt_reward(codec, prompt_tokens, config["horizon"], from_dict(config["reward"], RewardConfig))
        for start in range(0, len(trajectories), batch):
            part = trajectories[start : start + batch]
            final, per_layer = layer_states(lm, prompt_tokens, [x["actions"] for x, _ in part], action_ids, layers)
            for i, (x, steps) in enumerate(part):
                steps_t = torch.as_tensor(steps)
                rows["features"].append(per_layer[i, steps_t].numpy())
                if head is not None:
                    q = head.q(final[i, steps_t]).gather(1, torch.as_tensor(x["actions"][steps])[:, None])
                    rows["head_q"].append(q.squeeze(1).double().numpy())
                else:
                    rows["head_q"].append(np.full(len(steps), np.nan))
                r, ahead, share = partial_rewards(codec, reward, x["actions"], steps)
                rows["partial_reward"].append(r)
                rows["ahead_reward"].append(ahead)
                rows["completed"].append(share)
                rows["value"].append(x["values"][steps].astype(np.float64))
                rows["depth"].append(np.asarray(steps) + 1)
                rows["terminal"].append(np.asarray(steps) + 1 == len(x["actions"]))
                rows["prompt"].append(np.full(len(steps), prompt_id))
        print(f"prompt {k + 1}/{len(chosen)}: {sum(len(s) for _, s in trajectories)} nodes", flush=True)
    prompt = np.concatenate(rows["prompt"])
    return Nodes(
        features=np.concatenate(rows["features"]), head_q=np.concatenate(rows["head_q"]),
        partial_reward=np.concatenate(rows["partial_reward"]), ahead_reward=np.concatenate(rows["ahead_reward"]),
        completed=np.concatenate(rows["completed"]),
        value=np.concatenate(rows["value"]), depth=np.concatenate(rows["depth"]),
        terminal=np.concatenate(rows["terminal"]), prompt=prompt,
        is_val=np.isin(prompt, list(val_ids)),
    )
