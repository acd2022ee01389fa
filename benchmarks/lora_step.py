"""One LoRA training step's LM work, before and after the trainer cached what the frozen layers give.

    python -m benchmarks.lora_step --paths 64 --prompts 8 --top-layers 2

The batch: `--paths` draws of p (12 steps of forecast) spread over `--prompts` real windows (48 steps of
AirPassengers' and Wine's history each), as a shuffled training batch holds them. Timed, forward and backward
of Σ h·g over the adapted states of every path, in the same process:
1. before: `adapted_path_states`, prompt + path through every layer, with gradients to the adapter;
2. after: `adapted_states_from_layer_inputs`, the adapted top layers only, on the inputs the frozen layers
   below gave (`TorchLM.layer_inputs`, computed once per trajectory by the trainer and not timed here; its
   one-off cost is printed beside);
and checks that both give the same states and adapter gradients. Prints one Markdown row.
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import torch

from data.series import load_builtin
from sadt.cli import CommandParser, positive_int, run_command
from sadt.codec import Codec
from sadt.lm.base_model import load_base_lm
from sadt.lora_head import (
    LoRAHeadConfig,
    adapted_path_states,
    adapted_states_from_layer_inputs,
    add_lora,
    first_adapted_layer,
    lora_parameters,
)
from sadt.rollout import rollout
from search.forecast_task import ForecastTask


def batch_by_prompt(lm, codec: Codec, n_paths: int, n_prompts: int) -> dict[tuple, list[list[int]]]:
    """{prompt token ids: paths (token ids)}: p's draws of 12 steps on `n_prompts` 48-step windows."""
    windows = [values[start:start + 48] for name in ("AirPassengers", "Wine")
               for values in [load_builtin(name).values] for start in range(0, 8 * 12, 12)][:n_prompts]
    generator = torch.Generator().manual_seed(0)
    groups = {}
    for i, context in enumerate(windows):
        task = ForecastTask.build(codec, context, 12)
        n = n_paths // n_prompts + (i < n_paths % n_prompts)
        prompt = lm.prefill(task.prompt_ids)
        out = rollout(lm, prompt, task.action_token_ids, task.grammar, [[]] * n, generator=generator)
        groups[tuple(task.prompt_ids)] = [[task.action_token_ids[a] for a in s] for s in out.full_sequences([[]] * n)]
    return groups


def real_states(paths: list[list[int]], width: int) -> torch.Tensor:
    """(B, width, 1) 1 on s_0..s_T of each path, 0 on padding (as the losses mask padded steps)."""
    return (torch.arange(width)[None] <= torch.tensor([len(p) for p in paths])[:, None]).float()[..., None]


def step(states_of, peft_model, groups, weights) -> tuple[float, list[torch.Tensor], list[torch.Tensor]]:
    """Seconds for the forward and backward of Σ h·g over every group's adapted real states; the states and
    the adapter's gradients."""
    peft_model.zero_grad()
    start = time.perf_counter()
    states = [states_of(prompt, paths) for prompt, paths in groups.items()]
    sum((h * weights[: h.shape[1]] * real_states(paths, h.shape[1])).sum() for h, paths in
        zip(states, groups.values())).backward()
    seconds = time.perf_counter() - start
    return seconds, [h.detach() for h in states], [p.grad.clone() for p in lora_parameters(peft_model)]


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=positive_int, default=64)
    parser.add_argument("--prompts", type=positive_int, default=8)
    parser.add_argument("--top-layers", type=positive_int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    lm, tokenizer = load_base_lm()
    groups = batch_by_prompt(lm, Codec(tokenizer), args.paths, args.prompts)
    peft_model = add_lora(lm.model, LoRAHeadConfig(top_layers=args.top_layers))
    with torch.no_grad():
        for p in lora_parameters(peft_model):  # lora_B starts at 0: give the adapter something to do
            p.add_(0.01 * torch.randn_like(p))
    layer = first_adapted_layer(peft_model)
    start = time.perf_counter()
    inputs = {prompt: tuple(x.clone() for x in lm.layer_inputs(lm.prefill(list(prompt)), paths, layer))
              for prompt, paths in groups.items()}
    once = time.perf_counter() - start
    weights = torch.randn(max(len(p) for paths in groups.values() for p in paths) + 1, lm.hidden_size)

    def after(prompt, paths):
        return adapted_states_from_layer_inputs(peft_model, *inputs[prompt], [len(p) for p in paths])

    before_s, before_h, before_g = step(lambda prompt, paths: adapted_path_states(peft_model, prompt, paths),
                                        peft_model, groups, weights)
    after_s, after_h, after_g = step(after, peft_model, groups, weights)
    for paths, a, b in zip(groups.values(), after_h, before_h):
        for i, path in enumerate(paths):  # real states only: rows past a path's end are padding
            np.testing.assert_allclose(a[i, : len(path) + 1], b[i, : len(path) + 1], atol=1e-4)
    drift = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(after_g, before_g))
    tokens = sum(len(prompt) + len(p) for prompt, paths in groups.items() for p in paths)
    print(f"| {args.paths} paths over {args.prompts} prompts ({tokens} positions), LoRA on the top {args.top_layers} "
          f"of {lm.model.config.num_hidden_layers} layers | {before_s:.1f} s | {after_s:.1f} s | "
          f"{before_s / after_s:.1f}× | {once:.1f} s once | grads' max relative difference {drift:.1e} | "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads |")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
