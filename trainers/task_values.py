"""What the losses read besides the LM: the forecast task's value terms along each trajectory, and the
self-normalised weights of the buffers' draws from p (and P_F). Both are rebuilt from the buffers' own metadata.
"""

from __future__ import annotations

import numpy as np
import torch

from data.buffer import SOURCES
from sadt.codec import Codec
from sadt.config import from_dict
from sadt.number_inputs import NumberInputs, number_inputs
from sadt.partial_reward import digits_written, prompt_reward, shaping_value
from sadt.rewards import ForecastReward, RewardConfig


class ForecastShaping:
    """R(s_t·a), k(s_t·a)/H and the digits of s_t's unfinished value for every step and action of a batch's
    trajectories (`sadt.partial_reward.shaping_value` of `value_form` at λ), each prompt's reward rebuilt from
    its own values and the harvest's reward config; cached per trajectory.

    Args:
        codec: the buffers' codec.
        harvest_config: the buffers' run config (its `horizon` and `reward` blocks).
        value_form: the head's task value ("digit_ahead", "soft_ahead", ...).
        lam: the soft look-ahead's λ (the fit's).
        positions: whether the head's β reads the digits written (`reward_weight_positions`).
    """

    def __init__(self, codec: Codec, harvest_config: dict, value_form: str, lam: float, positions: bool) -> None:
        self.codec, self.value_form, self.lam, self.positions = codec, value_form, lam, positions
        self.horizon = harvest_config["horizon"]
        self.reward_config = from_dict(harvest_config.get("reward", {}), RewardConfig)
        self.rewards: dict[tuple, ForecastReward] = {}
        self.cache: dict[tuple, torch.Tensor] = {}  # (prompt, actions) -> (3, T, A)

    def reward_of(self, prompt: tuple) -> ForecastReward:
        """The buffer's reward for one prompt, rebuilt from its own values (cached)."""
        if prompt not in self.rewards:
            self.rewards[prompt] = prompt_reward(self.codec, prompt, self.horizon, self.reward_config)
        return self.rewards[prompt]

    def __call__(self, batch: dict) -> torch.Tensor:
        """(3, B, T, A): R, the share of values completed and the digits written; 0 on padded steps."""
        actions, mask = batch["actions"], batch["mask"]
        out = torch.zeros(3, *actions.shape, len(self.codec.action_token_ids))
        for row, prompt in enumerate(batch["prompts"]):
            path = tuple(actions[row][mask[row]].tolist())
            if (prompt, path) not in self.cache:
                self.cache[prompt, path] = self._along(prompt, path)
            out[:, row, : len(path)] = self.cache[prompt, path]
        return out

    def numbers(self, batch: dict) -> NumberInputs:
        """The numbers of every state along the batch's trajectories (`sadt.number_inputs`), for a head whose
        residual reads them; each prompt's context is its reward's (one array per prompt)."""
        actions, mask = batch["actions"], batch["mask"]
        paths = [actions[row][mask[row]].tolist() for row in range(len(actions))]
        contexts = [self.reward_of(prompt).context for prompt in batch["prompts"]]
        config = self.codec.config
        return number_inputs(contexts, paths, config.max_digits, self.horizon, config.precision, steps=actions.shape[1])

    def _along(self, prompt: tuple, path: tuple) -> torch.Tensor:
        states = [path[:t] for t in range(len(path))]
        r, share = shaping_value(self.codec, self.reward_of(prompt), states, self.value_form, self.lam)
        written = digits_written(self.codec, states) if self.positions else np.zeros(len(states))
        position = np.broadcast_to(written[:, None], r.shape)  # read only by a per-position β
        return torch.as_tensor(np.stack([r, share, position]), dtype=torch.float32)


class DrawWeights:
    """ω_i = n_g exp(log w_i) / Σ_{j∈g} exp(log w_j) over the n_g draws of group g = (draw i's prompt, its source):
    the self-normalised importance weights of π* ∝ p e^{λr} the forward KL reads, a group's averaging 1; 0 for
    trajectories of other sources. A draw from p (source `prior_sample`) has log w = λ r; one of P_F's (source
    `policy_sample`, read when `with_policy`) has log w = λ r + log p(x) − log q(x), q the law that drew it (its
    log q stored at harvest, tempering included), so draws of any round's P_F (fresh or replayed) weigh in, each
    against its own law.

    Args:
        datasets: the train and validation sets (every draw of a prompt counts, whichever side it is on).
        lam: the fit's λ.
        with_policy: weigh P_F's own draws as well as p's.

    Raises:
        ValueError: a draw of P_F's without its log q (harvested before log q was stored).
    """

    def __init__(self, datasets, lam: float, with_policy: bool = False) -> None:
        self.lam = lam
        self.sources = [SOURCES["prior_sample"]] + ([SOURCES["policy_sample"]] if with_policy else [])
        log_w: dict[tuple[int, int], list[float]] = {}
        for dataset in datasets:
            for x in dataset.items:
                if x["source"] in self.sources:
                    log_w.setdefault((x["prompt_id"], x["source"]), []).append(self._log_w(x))
        unknown = [key for key, values in log_w.items()
                   if key[1] == SOURCES["policy_sample"] and not np.isfinite(values).all()]
        if unknown:
            raise ValueError(f"{len(unknown)} prompts have draws of P_F without a stored log q (prompt ids "
                             f"{[k for k, _ in unknown[:3]]}...): re-harvest them with `sampler: policy`")
        # (prompt id, source) -> (log Σ_j w_j, n)
        self.normalisers = {k: (float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)), len(v))
                            for k, v in log_w.items()}

    def _log_w(self, x: dict) -> float:
        ratio = x["log_p"] - x["log_q"] if x["source"] == SOURCES["policy_sample"] else 0.0
        return self.lam * x["reward"] + ratio

    def __bool__(self) -> bool:
        return bool(self.normalisers)

    def rows(self, batch: dict) -> torch.Tensor:
        """(B,) bool: the batch's draws that carry a weight."""
        return torch.isin(batch["source"], torch.tensor(self.sources))

    def __call__(self, batch: dict) -> torch.Tensor:
        """(B,) float64."""
        rows = self.rows(batch).nonzero().flatten()
        weights = torch.zeros(len(batch["source"]), dtype=torch.float64)
        if len(rows):
            source = batch["source"][rows]
            norm = torch.tensor([self.normalisers[int(p), int(s)] for p, s in zip(batch["prompt_index"][rows], source)],
                                dtype=torch.float64)
            log_norm, n = norm.unbind(dim=1)  # (k,), (k,)
            ratio = torch.where(source == SOURCES["policy_sample"], batch["log_p_over_q"][rows], 0.0)
            weights[rows] = n * torch.exp(self.lam * batch["reward"][rows].double() + ratio - log_norm)
        return weights
