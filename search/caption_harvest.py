"""Training prompts for a caption head: `python -m search.caption_harvest --config configs/harvest/caption_prior.yaml`.

The caption task (`search.caption`) describes a series' last `context_length` values, the window every caption
benchmark scores. A head that is to be scored there is trained on earlier windows of the same series' history,
none of which overlaps that last window: windows end `stride` values apart, backwards from where the scored
window begins, as many as fit (at most `windows_per_series`). Each window's prompt gets `search.n_samples`
i.i.d. draws of p cut to its top `search.top_k` a step (`sampler: prior`, the forward KL's data) or a tree
(`sampler: tree`), appended to an HDF5 buffer that `trainers.fit --model.task text` reads. Resumable.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from sadt.cli import CommandParser, run_command
from sadt.config import ConfigError, load_config
from search.caption import MIN_CONTEXT, CaptionReward, caption_prompt
from search.config import SearchConfig, search_config
from search.text_task import TEXT_SAMPLERS, TextTask, harvest_text


@dataclass(frozen=True)
class CaptionHarvestConfig:
    series: list[str] = field(default_factory=lambda: ["AirPassengers", "AusBeer", "Sunspots", "Wine", "Wooly"])
    context_length: int = 36  # the caption window (the scored one is each history's last)
    windows_per_series: int = 8  # earlier windows per series, at most (fewer where the history is short)
    stride: int = 6  # values between consecutive windows' ends
    max_tokens: int = 24
    sampler: str = "prior"  # "prior": i.i.d. draws of p (top_k); "tree": a MaxEnt-TS tree per prompt
    output: str = "data/buffers/caption_prior.h5"
    search: SearchConfig = field(default_factory=lambda: search_config(lam=5.0, top_k=20, n_samples=128,
                                                                       batch_size=64))

    def __post_init__(self) -> None:
        if not self.series:
            raise ValueError("caption harvest `series` needs at least one series")
        if self.context_length < MIN_CONTEXT or self.windows_per_series < 1 or self.stride < 1:
            raise ValueError(f"caption harvest needs context_length >= {MIN_CONTEXT}, windows_per_series >= 1 and "
                             f"stride >= 1, got {self.context_length}, {self.windows_per_series}, {self.stride}")
        if self.sampler not in TEXT_SAMPLERS:
            raise ValueError(f"caption harvest `sampler` must be one of {TEXT_SAMPLERS}, got {self.sampler!r}")
        if self.search.top_k is None:
            raise ValueError("caption harvest `search.top_k` must be set (e.g. 20): the caption benchmark's p is "
                             "cut to its top k a step, and the head learns that target")


def training_window_ends(history_length: int, context_length: int, windows: int, stride: int) -> list[int]:
    """Ends of the windows before the scored one (which is history[-context_length:]): the latest ends where
    the scored window starts, each next one `stride` earlier, while a whole window fits."""
    first_end = history_length - context_length
    return [end for end in range(first_end, context_length - 1, -stride)][:windows]


def caption_training_tasks(tokenizer, config: CaptionHarvestConfig) -> dict[str, TextTask]:
    """key -> caption task of every training window (`training_window_ends`), series by series."""
    from data.series import load_builtin

    tasks = {}
    for name in config.series:
        history = load_builtin(name).context
        ends = training_window_ends(history.size, config.context_length, config.windows_per_series, config.stride)
        if not ends:
            raise ValueError(f"series {name!r}: its history of {history.size} values holds no window of "
                             f"{config.context_length} before the scored one")
        for end in ends:
            values = history[end - config.context_length : end]
            tasks[f"caption/series={name}/end={end}"] = TextTask.build(
                tokenizer, caption_prompt(name, values), CaptionReward(values), max_tokens=config.max_tokens)
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/harvest/caption_prior.yaml"))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, CaptionHarvestConfig)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from sadt.lm.base_model import lm_fingerprint, load_base_lm

    lm, tokenizer = load_base_lm()
    tasks = caption_training_tasks(tokenizer, config)
    path = harvest_text(lm, tasks, config.search, config.output, lm_fingerprint(), config.sampler)
    print(f"buffer: {path} ({len(tasks)} prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
