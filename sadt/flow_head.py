"""F_φ as a small head on the frozen LM: Q_φ(s, a) over the allowed actions and a conditional log Z_φ(c).

`Q_φ(s, ·) = (MLP(h(s)) · E_A^T) / sqrt(H) + b`, where h(s) is the LM's final hidden state at s
(the same forward that expansion runs: the head adds no LM calls) and E_A (A, H) are the frozen
output-embedding rows of the action tokens, so the head reuses what the LM already knows about
each token. `log Z_φ(c)` is a second MLP on the prompt's hidden state h(s_0). Both output layers
start at zero: an untrained head gives Q = 0, i.e. P_F^φ = p, the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sadt.number_inputs import N_STATE_FEATURES, NumberInputs


@dataclass(frozen=True)
class FlowHeadConfig:
    hidden: int = 256  # width of the MLPs
    layers: int = 2  # hidden layers per MLP
    value_form: str = "none"  # the task value Q_φ adds to its learned part: "none", or one of
    # sadt.partial_reward.VALUE_FORMS ("digit_ahead" R⁺ᵈ, "soft_ahead" V⁺ᵈ)
    reward_weight_bins: int = 0  # β: 1 if 0, else one learned weight per 1/n of the horizon completed (n + 1 in all)
    reward_weight_positions: int = 0  # > 0: β also per digit of the value being written (MLPFlowHead.weigh_reward)
    residual: bool = True  # False: Q_φ = β·R + a per-action bias, no MLP on h(s) (needs a value form)
    residual_inputs: str = "lm_states"  # what the residual MLP reads: "lm_states" h(s), or "numbers" (the context,
    # the values written and the value being written through a small GRU, `sadt.number_inputs`; needs a value form)
    number_width: int = 16  # "numbers": the GRU's width

    def __post_init__(self) -> None:
        from sadt.partial_reward import DROPPED_AT, DROPPED_VALUE_FORMS, VALUE_FORMS

        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"flow head needs hidden >= 1 and layers >= 1, got {self.hidden}, {self.layers}")
        if self.value_form in DROPPED_VALUE_FORMS:
            raise ValueError(f"flow head `value_form: {self.value_form}` was dropped (no better a proposal than p at "
                             f"λ = 15; BENCHMARKS.md): use one of {VALUE_FORMS}, or commit {DROPPED_AT} for such heads")
        if self.value_form not in ("none", *VALUE_FORMS):
            raise ValueError(f"flow head `value_form` must be one of {('none', *VALUE_FORMS)}, got {self.value_form!r}")
        if not self.shaped and (not self.residual or self.reward_weight_bins):
            raise ValueError("`residual: false` and `reward_weight_bins` weigh a task value: they need a `value_form`")
        if self.reward_weight_bins < 0 or self.reward_weight_positions < 0:
            raise ValueError(f"`reward_weight_bins` and `reward_weight_positions` must be >= 0, got "
                             f"{self.reward_weight_bins}, {self.reward_weight_positions}")
        if self.residual_inputs not in ("lm_states", "numbers"):
            raise ValueError(f"flow head `residual_inputs` must be 'lm_states' or 'numbers', got "
                             f"{self.residual_inputs!r}")
        if self.residual_inputs == "numbers" and not (self.shaped and self.residual):
            raise ValueError("`residual_inputs: numbers` reads a forecast's numbers through its task: it needs a "
                             "`value_form` and `residual: true`")
        if self.number_width < 1:
            raise ValueError(f"flow head `number_width` must be >= 1, got {self.number_width}")
        if self.reward_weight_positions and not self.reward_weight_bins:
            raise ValueError("`reward_weight_positions` splits β's bins by digit position: it needs "
                             "`reward_weight_bins`")

    @property
    def shaped(self) -> bool:
        """Whether Q_φ adds a task value (`sadt.partial_reward.ShapedValue` wraps such a head)."""
        return self.value_form != "none"


def _mlp(d_in: int, width: int, layers: int, d_out: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    out = nn.Linear(width, d_out)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*blocks, out)


class MLPFlowHead(nn.Module):
    """Q_φ and log Z_φ from frozen LM hidden states.

    Args:
        action_embeddings: (A, H) output-embedding rows of the action tokens (kept frozen).
        config: widths.
    """

    def __init__(self, action_embeddings: torch.Tensor, config: FlowHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or FlowHeadConfig()
        A, H = action_embeddings.shape
        self.register_buffer("action_embeddings", action_embeddings.detach().clone())
        if self.config.residual_inputs == "numbers":
            self.number_gru = nn.GRU(1, self.config.number_width, batch_first=True)
            self.q_mlp = _mlp(self.config.number_width + N_STATE_FEATURES, self.config.hidden, self.config.layers, H)
        elif self.config.residual:
            self.q_mlp = _mlp(H, self.config.hidden, self.config.layers, H)
        self.q_bias = nn.Parameter(torch.zeros(A))
        self.log_z_mlp = _mlp(H, self.config.hidden, self.config.layers, 1)
        self.scale = 1.0 / math.sqrt(H)
        if self.config.reward_weight_bins:  # starts at β = 1: an untrained head's Q is R exactly
            positions = (self.config.reward_weight_positions,) if self.config.reward_weight_positions else ()
            self.reward_weight = nn.Parameter(torch.ones(self.config.reward_weight_bins + 1, *positions))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Q_φ(s, ·): the `value_head` callable the search reads."""
        if self.config.shaped:
            raise RuntimeError("this head's Q_φ adds a task value (R, R⁺, ...) of a task: pass it to "
                               "ForecastTask.search, or wrap it in sadt.partial_reward.ShapedValue")
        return self.q(hidden)

    def q(self, hidden: torch.Tensor) -> torch.Tensor:
        """Q_φ(s, ·): (..., H) -> (..., A); with a `value_form`, the residual over R(s·a)."""
        if self.config.residual_inputs == "numbers":
            raise RuntimeError("this head's residual reads the forecast's numbers: call `number_q`")
        if not self.config.residual:
            return self.q_bias.expand(*hidden.shape[:-1], -1)
        u = self.q_mlp(hidden.to(self.action_embeddings.dtype))  # (..., H)
        return self.scale * u @ self.action_embeddings.T + self.q_bias

    def q_at(self, hidden: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q_φ(s, a) of the given actions only: hidden (..., H), actions (..., k) -> (..., k), what `q` gives
        at those columns (a text task's top-k support, without scoring the whole vocabulary)."""
        if self.config.shaped or self.config.residual_inputs == "numbers":
            raise RuntimeError("`q_at` scores a plain head's actions (a text task's); a forecast head reads `q`")
        bias = self.q_bias[actions]
        if not self.config.residual:
            return bias
        u = self.q_mlp(hidden.to(self.action_embeddings.dtype))  # (..., H)
        return self.scale * (self.action_embeddings[actions] @ u[..., None])[..., 0] + bias

    def number_q(self, inputs: NumberInputs) -> torch.Tensor:
        """Q_φ(s, ·) of `residual_inputs: numbers`, (B, T, A): the residual MLP on the GRU's state after the
        context and the values s has completed, with s's own numbers (`sadt.number_inputs`)."""
        g = self.number_states(inputs)
        u = self.q_mlp(torch.cat([g, inputs.state.to(g)], dim=-1))
        return self.scale * u @ self.action_embeddings.T + self.q_bias

    def number_states(self, inputs: NumberInputs) -> torch.Tensor:
        """(B, T, G): the GRU's state after each row's context (run once per distinct context) and the first
        `counts[b, t]` of its values written (one packed run over every row's values)."""
        dtype = self.action_embeddings.dtype
        after_context: dict[int, torch.Tensor] = {}
        for context in inputs.context:
            if id(context) not in after_context:
                after_context[id(context)] = self.number_gru(context.to(dtype).view(1, -1, 1))[1][0, 0]
        h0 = torch.stack([after_context[id(c)] for c in inputs.context])  # (B, G)
        lengths = torch.tensor([max(len(w), 1) for w in inputs.written])
        padded = nn.utils.rnn.pad_sequence([w if len(w) else torch.zeros(1) for w in inputs.written],
                                           batch_first=True).to(dtype)[..., None]  # (B, K, 1)
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.number_gru(packed, h0[None].contiguous())
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)  # (B, K, G)
        states = torch.cat([h0[:, None], out], dim=1)  # (B, K + 1, G): after 0..K values
        return states[torch.arange(len(states))[:, None], inputs.counts]

    def weigh_reward(self, partial_reward: torch.Tensor, share: torch.Tensor,
                     position: torch.Tensor | None = None) -> torch.Tensor:
        """β(k/H, d)·R: the partial reward R(s·a) weighted by the bin of the share k/H of values s·a completed
        and, with `reward_weight_positions` m, by d, the digits of the unfinished value already written at s
        (`sadt.partial_reward.digits_written`, same shape as R): the leading digit of a value commits to its
        magnitude and the last ones barely move R⁺ᵈ, so one scale for both is a compromise.

        β ≡ 1 without `reward_weight_bins`; with n bins, β[⌊n·k/H⌋] (k = H, the finished forecast, has its
        own), or β[⌊n·k/H⌋, min(d, m − 1)].
        """
        if not self.config.reward_weight_bins:
            return partial_reward
        n = self.config.reward_weight_bins
        index: tuple[torch.Tensor, ...] = (torch.floor(share * n + 1e-6).long().clamp(0, n),)  # + 1e-6: bin edges
        if self.config.reward_weight_positions:
            if position is None:
                raise ValueError("this head weighs R per digit position (`reward_weight_positions`): pass `position`")
            index += (position.long().clamp(0, self.config.reward_weight_positions - 1),)
        return self.reward_weight.to(partial_reward)[index] * partial_reward

    def log_z(self, prompt_hidden: torch.Tensor) -> torch.Tensor:
        """log Z_φ(c): (B, H) -> (B,)."""
        return self.log_z_mlp(prompt_hidden.to(self.action_embeddings.dtype)).squeeze(-1)
