"""Memory of a search over an LM's whole vocabulary: bytes per tree node with top-k children, and the peak
memory of a long MaxEnt-TS search on the caption task (search.caption), against the dense tree's bytes.

    python benchmarks/text_memory.py [--rollouts 2000] [--top-k 20] [--out benchmarks/results/text_memory]

Bytes per node are the tree's arrays per row (`Tree.bytes_per_node`), for k = 5, 20, 50 and for the dense
node (one slot per token). The search's peak is the process's peak resident set (`VmHWM`), beside the
resident set once the base model is loaded and has run a 16-rollout search (weights are paged in lazily);
the peak is reset there (`/proc/self/clear_refs`), so the difference is what the search added (Linux).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sadt.cli import CommandParser, positive_int, run_command

ROOT_DIR = Path(__file__).resolve().parents[1]


def memory_mb(field: str) -> float:
    """`VmRSS` (resident now) or `VmHWM` (peak resident) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=positive_int, default=2000)
    parser.add_argument("--top-k", type=positive_int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT_DIR / "benchmarks/results/text_memory")
    args = parser.parse_args(argv)

    from data.series import load_builtin
    from sadt.lm.base_model import load_base_lm
    from search.caption import CaptionConfig, CaptionReward, caption_prompt
    from search.config import search_config
    from search.text_task import TextTask
    from search.tree import Tree

    lm, tokenizer = load_base_lm()
    vocabulary = len(tokenizer)
    per_node = {f"k={k}": Tree(vocabulary, width=k).bytes_per_node() for k in (5, 20, 50)}
    per_node["dense"] = Tree(vocabulary).bytes_per_node()
    caption = CaptionConfig()
    values = load_builtin(caption.series).context[-caption.context_length :]
    task = TextTask.build(tokenizer, caption_prompt(caption.series, values), CaptionReward(values),
                          max_tokens=caption.max_tokens)
    warm = search_config(lam=caption.lam, top_k=args.top_k, n_rollouts=16, batch_size=16, progress=False)
    task.search(lm, warm)  # pages in every weight (they are read lazily) and the allocator's pools
    loaded_mb = memory_mb("VmRSS")
    reset_peak()  # the model's load peak is not the search's
    config = search_config(lam=caption.lam, top_k=args.top_k, n_rollouts=args.rollouts, batch_size=16, n_samples=16)
    start = time.perf_counter()
    result = task.search(lm, config)
    wall = time.perf_counter() - start
    nodes = result.tree.size
    report = {
        "vocabulary": vocabulary, "bytes_per_node": per_node, "rollouts": result.n_rollouts, "top_k": args.top_k,
        "nodes": nodes, "tree_mb": result.tree.nbytes / 2**20, "dense_tree_mb_for_these_nodes": per_node["dense"] *
        nodes / 2**20, "peak_rss_mb": memory_mb("VmHWM"), "rss_before_search_mb": loaded_mb, "wall_s": wall,
        "nfe_tokens": result.nfe_tokens, "mean_sample_reward": float(result.sample_rewards.mean()),
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
