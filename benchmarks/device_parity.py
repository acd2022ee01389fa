"""Does the base model score the same paths the same on another device and dtype? The CPU float32 model is the
reference.

    python -m benchmarks.device_parity --device cuda --dtypes float32 bfloat16

`--paths` forecast paths of `--length` actions are drawn once on the CPU (from the prior, over the 12 codec
actions after AirPassengers' prompt); every setting then scores all of them in one teacher-forced forward
(`path_states`). Per setting: the largest |Δ log p(a|s)| over every state and action, the mean KL(p_cpu ‖ p_dev)
per state, and the largest |Δ log p(x)| of a whole path, the quantity an importance weight exp(λ r) p/q carries.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.search_throughput import prompt_ids
from sadt.cli import CommandParser, positive_int, run_command
from sadt.codec import Codec
from sadt.grammar import FixedLengthGrammar
from sadt.lm.base_model import load_base_lm
from sadt.rollout import rollout


def path_log_probs(lm, ids: list[int], paths: list[list[int]], action_token_ids: list[int]) -> torch.Tensor:
    """(B, T+1, A) float64 log p(·|s_t) over the actions along every path (all paths have the same length)."""
    tokens = [[action_token_ids[a] for a in path] for path in paths]
    _, logits = lm.path_states(lm.prefill(ids), tokens, action_token_ids)
    return torch.log_softmax(logits.double().cpu(), dim=-1)


def parity_row(reference: torch.Tensor, other: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
    """Step and path discrepancies of `other` against `reference`, both (B, T+1, A) log-probabilities."""
    def path_log_prob(log_probs: torch.Tensor) -> torch.Tensor:  # the last state (after the final action) takes none
        return log_probs[:, :-1].gather(-1, actions[..., None])[..., 0].sum(-1)

    kl = (reference.exp() * (reference - other)).sum(-1)
    return {
        "max |Δ log p(a|s)|": float((reference - other).abs().max()),
        "mean KL per state": float(kl.mean()),
        "max |Δ log p(x)|": float((path_log_prob(reference) - path_log_prob(other)).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prompt", type=positive_int, default=128, help="prompt tokens")
    parser.add_argument("--paths", type=positive_int, default=64)
    parser.add_argument("--length", type=positive_int, default=32, help="actions per path")
    args = parser.parse_args(argv)

    cpu_lm, tokenizer = load_base_lm(dtype="float32", device="cpu")
    codec = Codec(tokenizer)
    ids = prompt_ids(codec, args.prompt)
    action_token_ids = list(codec.action_token_ids)
    grammar = FixedLengthGrammar(len(action_token_ids), args.length)
    drawn = rollout(cpu_lm, cpu_lm.prefill(ids), action_token_ids, grammar, [[]] * args.paths,
                    generator=torch.Generator().manual_seed(0))
    actions = drawn.actions
    paths = actions.tolist()
    reference = path_log_probs(cpu_lm, ids, paths, action_token_ids)
    del cpu_lm

    print(f"\n{args.paths} paths of {args.length} actions after a {args.prompt}-token prompt; reference: cpu float32\n")
    print("| device | dtype | max abs diff log p(a given s) | mean KL per state | max abs diff log p(x) |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes:
        lm, _ = load_base_lm(dtype=dtype, device=args.device)
        row = parity_row(reference, path_log_probs(lm, ids, paths, action_token_ids), actions)
        print(f"| {args.device} | {dtype} | " + " | ".join(f"{v:.2e}" for v in row.values()) + " |")
        del lm
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
