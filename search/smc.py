"""Sequential Monte Carlo over LM tokens: plain, and twisted by the flow head (Zhao et al., ICML 2024).

N particles grow one token per LM forward, all in one batch with the prompt's KV cache reused.
Targets along the way are `γ_t(s) = p(s) ψ(s)` with the twist ψ:

- `smc`: ψ = 1 until a particle ends, then exp(λ r(x)). Proposal p; the only weight is the reward.
- `twisted_smc`: ψ(s) = exp(g V_φ(s)), `V_φ(s) = (1/g) log Σ_a p(a|s) exp(g Q_φ(s,a))`, and the
  proposal is the head's own policy `P_F(a|s) = p(a|s) exp(g (Q_φ(s,a) − V_φ(s)))`, with
  g = guide_scale · λ. The incremental weight `γ_{t+1} / (γ_t P_F)` is then
  `exp(g (V_φ(s·a) − Q_φ(s,a)))`, with `g V_φ(x) = λ r(x)` at a terminal. With g = λ it is zero
  for an exact head, so every particle is an exact draw of π* and the estimate of log Z is exact;
  g < λ twists less (a wider proposal) and stays unbiased for Z.

When the effective sample size `(Σw)² / Σw²` falls below `ess_threshold · N`, the particles are
resampled (systematic) and `log Ẑ` collects `log mean w`; the product of those means is an
unbiased estimate of `Z = Σ_x p(x) exp(λ r(x))`, so `log Ẑ / λ` cross-checks a tree's root value.
A particle that has ended keeps its weight and is resampled like any other (a copy of a finished
forecast costs no LM work). NFE: one token position per live particle per step, so N particles
cost what N rollouts cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from sadt.importance import effective_sample_size, log_mean_exp
from sadt.lm.backend import LMBackend
from sadt.policy import draw, policy_log_probs
from sadt.rewards import checked_rewards
from search.task import Task

SMC_METHODS = ("smc", "twisted_smc")


@dataclass
class SMCResult:
    samples: list[list[int]]  # n_samples action sequences drawn from the final weighted particles
    sample_rewards: np.ndarray  # (n_samples,)
    best: list[int]  # the highest-reward particle
    best_reward: float
    root_value: float  # log Ẑ / λ, comparable with a tree's V̂(root)
    lam: float
    method: str
    n_rollouts: int  # particles
    nfe_tokens: int
    forward_calls: int
    wall_s: float
    resamples: int  # how many times the particles were resampled
    final_ess: float  # ESS of the final weights, in particles
    particles: list[list[int]] = field(default_factory=list)  # the final N particles
    log_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) their final log weights

    @property
    def log_Z(self) -> float:
        return self.lam * self.root_value


def systematic_resample(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N ancestor indices, particle i copied about N w_i / Σw times (one uniform for all)."""
    n = log_w.size
    w = np.exp(log_w - log_w.max())
    cumulative = np.cumsum(w / w.sum())
    cumulative[-1] = 1.0  # guard against round-off below 1
    return np.searchsorted(cumulative, (rng.uniform() + np.arange(n)) / n)


class SMC:
    """SMC sampler of π*(x) ∝ p(x|c) exp(λ r(x)) with the search's backend, grammar and reward.

    Args:
        lm, task: as for `TreeSearch`.
        config: a `SearchConfig` with method `smc` or `twisted_smc`; `n_rollouts` particles,
            `ess_threshold`, `lam`, `top_k`, `n_samples`, `seed`.
        value_head: a head or value (`sadt.value.Value`, bound by `task.value`), needed by (and only by) `twisted_smc`.
    """

    def __init__(
        self, lm: LMBackend, task: Task, config, value_head=None,
    ) -> None:
        if config.method not in SMC_METHODS:
            raise ValueError(f"SMC runs methods {SMC_METHODS}, got {config.method!r}")
        if config.needs_head != (value_head is not None):
            raise ValueError("a value_head is needed by, and only used by, method 'twisted_smc'")
        self.lm, self.grammar, self.reward_fn, self.config = lm, task.grammar, task.reward_fn, config
        self.value_head = task.value(value_head, config.lam)
        self.action_token_ids = torch.tensor(list(task.action_token_ids), device=lm.device)
        self.prompt_ids = list(task.prompt_ids)

    def run(self) -> SMCResult:
        config, lm, lam = self.config, self.lm, self.config.lam
        rng = np.random.default_rng(config.seed)
        generator = torch.Generator(device=lm.device).manual_seed(config.seed)
        start, calls0, tokens0 = time.perf_counter(), lm.stats.forward_calls, lm.stats.tokens
        n = config.n_rollouts
        prompt = lm.prefill(self.prompt_ids)
        batch = lm.extend(prompt, [[]] * n, self.action_token_ids)  # empty prefixes: no forward
        state = self.grammar.initial(n, lm.device)
        live = np.arange(n)  # particle id of each batch row
        actions: list[list[int]] = [[] for _ in range(n)]
        log_w = np.zeros(n)
        pending = np.zeros(n)  # λ Q_φ(s, a) of each particle's last move, awaiting λ V_φ(s·a)
        rewards = np.full(n, np.nan)
        log_z, resamples = 0.0, 0

        def live_sequences() -> list[list[int]]:  # each live particle's actions, for heads that read them
            return [actions[p] for p in live]

        with tqdm(total=n, desc=config.method, unit="particle done", disable=not config.progress) as bar:
            while live.size:
                q = self.value_head(batch.hidden, live_sequences) if self.value_head is not None else None
                log_p, proposal = policy_log_probs(batch.logits, self.grammar.mask(state), q, top_k=config.top_k,
                                                   guide_lam=config.guide_lam)  # (B, A)
                if self.value_head is not None:
                    lam_q = config.guide_lam * q.double()  # g Q_φ(s, ·)
                    lam_v = torch.logsumexp(log_p + lam_q, dim=-1)  # g V_φ(s) at the twist's own g
                    log_w[live] += lam_v.cpu().numpy() - pending[live]
                if effective_sample_size(log_w) < config.ess_threshold * n:
                    log_z += log_mean_exp(log_w)
                    ancestors = systematic_resample(log_w, rng)
                    actions = [list(actions[a]) for a in ancestors]
                    pending, rewards, log_w = pending[ancestors], rewards[ancestors], np.zeros(n)
                    row_of = np.full(n, -1)
                    row_of[live] = np.arange(live.size)
                    rows = row_of[ancestors]
                    live = np.flatnonzero(rows >= 0)
                    keep = torch.as_tensor(rows[live], device=lm.device)
                    batch, state = lm.select(batch, keep), state.index(keep)
                    proposal, lam_q = proposal[keep], (lam_q[keep] if self.value_head is not None else None)
                    resamples += 1
                    if not live.size:
                        break
                chosen = draw(proposal, generator)  # (B,)
                if self.value_head is not None:
                    pending[live] = lam_q.gather(1, chosen[:, None]).squeeze(1).cpu().numpy()
                for particle, action in zip(live.tolist(), chosen.tolist()):
                    actions[particle].append(action)
                state = self.grammar.advance(state, chosen)
                done = state.done.cpu().numpy()
                if done.any():
                    ended = live[done]
                    r = checked_rewards(self.reward_fn, [actions[i] for i in ended])
                    rewards[ended] = r
                    log_w[ended] += lam * r - pending[ended]
                    bar.update(int(done.sum()))
                    keep = torch.as_tensor(np.flatnonzero(~done), device=lm.device)
                    live, batch, state, chosen = live[~done], lm.select(batch, keep), state.index(keep), chosen[keep]
                if live.size:
                    batch = lm.step(batch, self.action_token_ids[chosen])
        log_z += log_mean_exp(log_w)
        w = np.exp(log_w - log_w.max())
        draws = rng.choice(n, size=config.n_samples, p=w / w.sum())  # samples of the weighted particle set
        best = int(np.argmax(rewards))
        return SMCResult(
            samples=[actions[i] for i in draws],
            sample_rewards=rewards[draws],
            best=actions[best],
            best_reward=float(rewards[best]),
            root_value=log_z / lam,
            lam=lam,
            method=config.method,
            n_rollouts=n,
            nfe_tokens=lm.stats.tokens - tokens0,
            forward_calls=lm.stats.forward_calls - calls0,
            wall_s=time.perf_counter() - start,
            resamples=resamples,
            final_ess=effective_sample_size(log_w),
            particles=actions,
            log_weights=log_w,
        )
