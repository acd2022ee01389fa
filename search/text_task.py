"""Free text as the search sees it: a prompt, the LM's whole vocabulary as actions, a reward on decoded strings.

Any sampler `make_sampler` names runs on it (MaxEnt-TS, DTS, MCTS, SMC, ...). The vocabulary is tens of
thousands of actions, so tree methods need `top_k`: each node then keeps its k most likely tokens
(`search.tree`, O(k) bytes a node) and the target is p truncated to its top k at every step,
π*(x) ∝ p_k(x|c) exp(λ r(x)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data.buffer import SOURCES, BufferWriter, PromptRecord
from sadt.config import to_dict
from sadt.grammar import TextGrammar
from sadt.lm.backend import LMBackend
from sadt.rewards import checked_rewards
from sadt.value import Value, plain_value
from search.config import SMC_METHODS, SearchConfig, SearchResult
from search.sampler import make_sampler
from search.smc import SMC, SMCResult
from search.tree_search import TreeSearch

TextReward = Callable[[list[str]], Sequence[float]]  # decoded texts -> one reward each


@dataclass
class TextTask:
    tokenizer: object
    prompt_ids: list[int]
    grammar: TextGrammar
    reward: TextReward

    @classmethod
    def build(cls, tokenizer, prompt: str, reward: TextReward, max_tokens: int = 32,
              stop: Sequence[str] = ("\n",)) -> TextTask:
        """Text after `prompt`, ending at EOS, at any of the `stop` strings (each one token) or after
        `max_tokens` tokens."""
        stop_ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        for text in stop:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"stop string {text!r} is {len(ids)} tokens for this tokenizer: a stop must be one")
            stop_ids += ids
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        if not prompt_ids:
            raise ValueError("a text task needs a non-empty prompt")
        grammar = TextGrammar(n_actions=len(tokenizer), max_tokens=max_tokens, stop_actions=tuple(stop_ids))
        return cls(tokenizer, prompt_ids, grammar, reward)

    @property
    def action_token_ids(self) -> range:
        """Action a is token a: the whole vocabulary."""
        return range(self.grammar.n_actions)

    def value(self, head, lam: float | None = None) -> Value | None:
        """A head reads the text's hidden states as it is (a text task has no partial reward to add)."""
        return plain_value(head)

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """Each action sequence as text, without its stop token."""
        stops = set(self.grammar.stop_actions)
        return [self.tokenizer.decode([t for t in s if t not in stops]) for s in sequences]

    def reward_fn(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """r(x) of each terminal token sequence, (B,); a reward that is not a number (a string too, even "1.0"),
        not finite or too large for exp(λ r) is a `RewardError` naming the sample (`sadt.rewards.checked_rewards`)."""
        return checked_rewards(lambda batch: self.reward(self.decode(batch)), list(sequences))

    def sampler(self, lm: LMBackend, config: SearchConfig, value_head=None) -> TreeSearch | SMC:
        """The configured sampler on this task, not yet run."""
        if config.method not in SMC_METHODS and config.top_k is None:
            raise ValueError(f"method {config.method!r} on a text task needs `top_k` (e.g. 20): a node over the "
                             f"full vocabulary of {self.grammar.n_actions} tokens would hold ~1 MB")
        return make_sampler(lm, self, config, value_head)

    def search(self, lm: LMBackend, config: SearchConfig, value_head=None) -> SearchResult | SMCResult:
        """Run the configured sampler; `task.decode(result.samples)` gives the texts."""
        return self.sampler(lm, config, value_head).run()


TEXT_SAMPLERS = ("tree", "prior")  # what `harvest_text` stores a prompt's trajectories from


def harvest_text(lm: LMBackend, tasks: Mapping[str, TextTask], config: SearchConfig, output: str | Path,
                 lm_fingerprint: str, sampler: str = "tree") -> Path:
    """Search every text task (key -> task) and append its trajectories to the HDF5 buffer `output`, one
    committed prompt per task. `sampler: tree` stores the tree (`search.harvest.tree_record`: tree paths and
    samples, token ids as actions, raw rewards); `sampler: prior` stores `config.n_samples` i.i.d. draws of p
    (cut to `config.top_k` a step; source `prior_sample`), the data the forward KL weighs by exp(λ r).
    Resumable: keys already in the file are skipped; task i searches with seed `config.seed + i`."""
    from search.harvest import tree_record

    if sampler not in TEXT_SAMPLERS:
        raise ValueError(f"text harvest `sampler` must be one of {TEXT_SAMPLERS}, got {sampler!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    grammars = {task.grammar for task in tasks.values()}
    if len(grammars) > 1:
        raise ValueError(f"text tasks of one buffer must share a vocabulary, max_tokens and stops, got "
                         f"{sorted(map(str, grammars))}")
    grammar = grammars.pop() if grammars else None
    meta = {"lam": config.lam, "task": "text", "sampler": sampler,
            "n_actions": grammar.n_actions if grammar else 0,
            "grammar": {} if grammar is None else {"max_tokens": grammar.max_tokens,
                                                   "stop_actions": list(grammar.stop_actions)},
            "config": {"search": to_dict(config)}}  # the grammar lets trainers.fit rebuild each step's allowed tokens
    with BufferWriter(output, lm_fingerprint, meta) as writer:
        done = writer.done_keys()
        for index, (key, task) in enumerate(tqdm(tasks.items(), desc=f"harvest {output.name}", unit="prompt")):
            if key in done:
                continue
            task_config = dataclasses.replace(config, seed=config.seed + index, progress=False)
            if sampler == "prior":
                writer.append(prior_text_record(lm, task, task_config, key, index))
                continue
            result = task.search(lm, task_config)
            rewards = task.reward_fn  # a text reward has no task / spectral parts
            writer.append(tree_record(result, key, index, task.prompt_ids, lambda x, r=rewards: (r(x), None, None)))
    return output


def prior_text_record(lm: LMBackend, task: TextTask, config: SearchConfig, key: str, index: int) -> PromptRecord:
    """`config.n_samples` i.i.d. draws of p cut to its top `config.top_k` a step, with their per-step log p."""
    from search.ancestral import sample_policy

    draws = sample_policy(lm, task, n_samples=config.n_samples, batch_size=config.batch_size, top_k=config.top_k,
                          seed=config.seed, progress=False)
    return PromptRecord(
        key=key, task_index=index, prompt_tokens=np.asarray(task.prompt_ids),
        lengths=np.array([len(a) for a in draws.actions]), actions=np.concatenate(draws.actions),
        log_prior=np.concatenate(draws.step_log_prior), reward=task.reward_fn(draws.actions), reward_task=None,
        reward_spectral=None, source=np.full(len(draws.actions), SOURCES["prior_sample"]),
        log_q=draws.log_proposal,
    )
