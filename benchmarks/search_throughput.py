"""Rollout throughput of MaxEnt-TS against Hugging Face `generate`, same model, batch and lengths.

    python benchmarks/search_throughput.py --prompt 128 --new-tokens 32 --batch 64 --rollouts 256

Three measurements in one process, in this order:
1. `generate`: batches of `--batch` rows, `do_sample=True`, exactly `--new-tokens` new tokens
   (min = max), from the full softmax, the prompt prefilled per row (what generate does).
2. `rollout`: our batched rollouts from the root (prompt prefilled once, KV shared, logits over
   the 12 codec actions only), same batch and length: the backend's raw speed; then the same
   rollouts with transformers' concatenating KV layer (`DynamicLayer`, a copy of every row's
   cache each step) instead of ours (`GrowingLayer`, written in place): the cache's before/after.
3. MaxEnt-TS with `--rollouts` rollouts in iterations of `--batch`, on a fixed-length grammar
   over the 12 actions (every terminal has exactly `--new-tokens` actions), with a cheap reward so
   the tree machinery, not the reward, is measured. Rollouts start at leaves below the root,
   so they are shorter than `--new-tokens`: tokens/s compares like with like, rollouts/s does not.

Ratios are against `generate` from the same run. Tree overhead = (select + insert/backup) / wall.
On a GPU each timed method first runs one untimed batch (CUDA context, kernels, allocator), and the clock
waits for the device before it stops. Prints one Markdown table row per measurement.
"""

from __future__ import annotations

import platform
import resource
import sys
import time

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

from data.series import load_builtin
from sadt.cli import CommandParser, positive_int, run_command
from sadt.codec import Codec
from sadt.grammar import FixedLengthGrammar
from sadt.lm.backend import GrowingLayer
from sadt.lm.base_model import load_base_lm
from sadt.rollout import rollout
from search.config import search_config
from search.task import Problem
from search.tree_search import TreeSearch


def prompt_ids(codec: Codec, length: int) -> list[int]:
    """The first `length` tokens of AirPassengers' encoded history (real digits, not random ids)."""
    ids, _ = codec.encode_prompt(load_builtin("AirPassengers").values)
    if len(ids) < length:
        raise ValueError(f"--prompt {length} exceeds the {len(ids)} tokens of the encoded series")
    return ids[:length]


def timed(device: torch.device, work, n_batches: int) -> float:
    """Seconds for `n_batches` calls of `work()`; on a GPU after one untimed call, and synchronised."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        work()
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n_batches):
        work()
    if on_gpu:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_generate(lm, ids: list[int], batch: int, new_tokens: int, n_batches: int) -> float:
    inputs = torch.tensor([ids] * batch, device=lm.device)
    mask = torch.ones_like(inputs)
    return timed(lm.device, lambda: lm.model.generate(
        input_ids=inputs, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
    ), n_batches)


def time_rollout(lm, codec: Codec, ids: list[int], batch: int, new_tokens: int, n_batches: int) -> float:
    """Our rollouts, the prompt's prefill included in every timed batch (generate prefills per batch too)."""
    grammar = FixedLengthGrammar(len(codec.action_token_ids), new_tokens)
    generator = torch.Generator(device=lm.device).manual_seed(0)
    return timed(lm.device, lambda: rollout(
        lm, lm.prefill(ids), codec.action_token_ids, grammar, [[]] * batch, generator=generator), n_batches)


def run_maxent(lm, codec: Codec, ids: list[int], batch: int, new_tokens: int, rollouts: int):
    grammar = FixedLengthGrammar(len(codec.action_token_ids), new_tokens)

    def reward(sequences: list[list[int]]) -> np.ndarray:  # cheap and non-trivial: mean digit
        return np.array([np.mean(s) / 11.0 for s in sequences])

    config = search_config(lam=2.0, n_rollouts=rollouts, batch_size=batch, n_samples=32, progress=True)
    return TreeSearch(lm, Problem(ids, codec.action_token_ids, grammar, reward), config).run()


def workload_parser(description: str, batch: int, rollouts: int) -> CommandParser:
    """The workload the throughput benchmarks share: prompt tokens, tokens per rollout, batch, rollouts."""
    parser = CommandParser(description=description)
    parser.add_argument("--prompt", type=positive_int, default=128, help="prompt tokens")
    parser.add_argument("--new-tokens", type=positive_int, default=32, help="tokens per rollout")
    parser.add_argument("--batch", type=positive_int, default=batch, help="rows per forward (= search batch)")
    parser.add_argument("--rollouts", type=positive_int, default=rollouts, help="MaxEnt-TS rollout budget")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser(__doc__.splitlines()[0], batch=64, rollouts=256)
    parser.add_argument("--generate-batches", type=positive_int, default=2, help="batches timed per method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    lm, tokenizer = load_base_lm(dtype=args.dtype, device=args.device)
    codec = Codec(tokenizer)
    ids = prompt_ids(codec, args.prompt)
    B, L, n = args.batch, args.new_tokens, args.generate_batches

    gen_s = time_generate(lm, ids, B, L, n)
    gen_rollouts, gen_tokens = n * B / gen_s, n * B * L / gen_s
    roll_s = time_rollout(lm, codec, ids, B, L, n)
    lm.cache_layer = DynamicLayer
    concat_s = time_rollout(lm, codec, ids, B, L, n)
    lm.cache_layer = GrowingLayer

    lm.stats.reset()
    result = run_maxent(lm, codec, ids, B, L, args.rollouts)
    t = result.timings
    rollout_tokens = result.nfe_tokens - args.prompt  # tokens past the prompt (the tree's rollouts)
    overhead = (t["select"] + t["insert_backup"]) / result.wall_s
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )

    on_gpu = args.device.startswith("cuda")
    cpu = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if on_gpu else cpu
    print(f"\n{device}, {args.dtype}, torch {torch.__version__}, prompt {args.prompt}, {L} new tokens, batch {B}\n")
    print("| method | rollouts | wall s | rollouts/s | new tokens/s | tokens/s vs generate | rollouts/s vs generate |")
    print("|---|---|---|---|---|---|---|")
    def row(name: str, rollouts: int, seconds: float, tokens: float) -> str:  # ratios against generate's
        return (f"| {name} | {rollouts} | {seconds:.1f} | {rollouts / seconds:.2f} | {tokens / seconds:.0f} | "
                f"{tokens / seconds / gen_tokens:.2f} | {rollouts / seconds / gen_rollouts:.2f} |")

    print(row("HF generate", n * B, gen_s, n * B * L))
    print(row("sadt rollout", n * B, roll_s, n * B * L))
    print(row("sadt rollout, concatenating KV", n * B, concat_s, n * B * L))
    print(row("MaxEnt-TS", result.n_rollouts, result.wall_s, rollout_tokens))
    stats = result.tree_stats
    print(f"\nMaxEnt-TS: mean rollout length {rollout_tokens / max(result.n_rollouts, 1):.1f} tokens; "
          f"tree overhead {100 * overhead:.1f}% of wall (select {t['select']:.2f} s, insert+backup "
          f"{t['insert_backup']:.2f} s, LM {t['lm_rollout']:.1f} s, reward {t['reward']:.2f} s); "
          f"{stats['nodes']} nodes, {stats['bytes_per_node']:.0f} bytes/node (capacity), "
          f"tree {result.tree.nbytes / 2**20:.1f} MiB; peak memory {peak_mb:.0f} MiB")

    return 0

if __name__ == "__main__":
    sys.exit(run_command(main))
