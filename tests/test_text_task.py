"""Text through the same samplers (issue 25): the whole vocabulary as actions, top-k children, a reward on strings."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sadt.grammar import TextGrammar
from sadt.lm.backend import TorchLM
from search.caption import CaptionReward, distinct_bigrams, is_seasonal, trend_sign
from search.config import search_config
from search.text_task import TextTask


def test_text_grammar_stops_at_a_stop_token_or_at_max_tokens():
    grammar = TextGrammar(n_actions=50, max_tokens=4, stop_actions=(7,))
    state = grammar.replay([[1, 7], [1, 2, 3], [1, 2, 3, 4], []])
    assert state.done.tolist() == [True, False, True, False]
    assert grammar.mask(state).sum(1).tolist() == [0, 50, 0, 50]
    with pytest.raises(ValueError, match="stop token 60 is outside the vocabulary of 50"):
        TextGrammar(n_actions=50, max_tokens=4, stop_actions=(60,))


class WordCount:
    """A stand-in tokenizer over a tiny vocabulary: token t is the word `w<t>`; token 0 is EOS."""

    eos_token_id = 0

    def __len__(self):
        return 64  # tiny_llama's vocabulary

    def encode(self, text, add_special_tokens=False):
        return [int(w[1:]) for w in text.split()] if text.strip() else [5]  # "\n" -> token 5

    def decode(self, ids):
        return " ".join(f"w{t}" for t in ids)


def likes_w9(hidden):
    """A value head over the whole vocabulary: Q(s, a) = 1 for token 9."""
    return torch.nn.functional.one_hot(torch.full((hidden.shape[0],), 9), 64).double()


@pytest.mark.parametrize("method, hybrid", [("maxent_ts", "off"), ("maxent_ts", "visits"), ("dts", "off"),
                                            ("smc", "off"), ("twisted_smc", "off")])
def test_every_sampler_runs_on_a_text_task_over_the_whole_vocabulary(method, hybrid):
    from conftest import tiny_llama

    lm = TorchLM(tiny_llama(0))
    task = TextTask.build(WordCount(), "w1 w2 w3", lambda texts: [t.count("w9") for t in texts], max_tokens=6)
    own = {"hybrid": hybrid} if method == "maxent_ts" else {}
    config = search_config(method=method, **own, lam=2.0, top_k=8, n_rollouts=24, batch_size=8, n_samples=4,
                           seed=0, progress=False)
    head = likes_w9 if method == "twisted_smc" or hybrid != "off" else None
    result = task.search(lm, config, head)
    assert len(result.samples) == 4 and all(1 <= len(s) <= 6 for s in result.samples)
    assert result.sample_rewards.tolist() == [task.decode([s])[0].count("w9") for s in result.samples]
    if hybrid != "off":  # the head's Q over the vocabulary, kept at each node's k slots
        tree = result.tree
        expanded = np.flatnonzero(np.isfinite(tree.log_prior[: tree.size, 0]))
        slots = tree.slot_action[expanded]
        np.testing.assert_array_equal(tree.q[expanded], np.where(slots == 9, 1.0, 0.0))
    if method in ("maxent_ts", "dts"):
        tree = result.tree
        assert tree.sparse and tree.children.shape[1] == 8  # k slots a node, whatever the vocabulary
        expanded = ~np.isnan(tree.log_prior[: tree.size, 0])
        assert (np.isfinite(tree.log_prior[: tree.size][expanded]).sum(1) <= 8).all()


def test_a_tree_method_on_a_text_task_without_top_k_is_a_clear_error():
    from conftest import tiny_llama

    task = TextTask.build(WordCount(), "w1", lambda texts: [0.0] * len(texts))
    with pytest.raises(ValueError, match="needs `top_k`"):
        task.sampler(TorchLM(tiny_llama(0)), search_config(method="maxent_ts", progress=False))


def test_a_stop_string_of_several_tokens_is_refused(base_tokenizer):
    with pytest.raises(ValueError, match="stop string 'The end' is 2 tokens"):
        TextTask.build(base_tokenizer, "Hello", lambda texts: [0.0] * len(texts), stop=("The end",))


def test_the_caption_reward_reads_trend_and_seasonality():
    months = np.arange(48)
    rising_seasonal = 100 + 2 * months + 20 * np.sin(2 * np.pi * months / 12)
    assert trend_sign(rising_seasonal) == 1 and trend_sign(-rising_seasonal) == -1
    assert is_seasonal(rising_seasonal) and not is_seasonal(100 + 2 * months)
    reward = CaptionReward(rising_seasonal)
    assert reward(["rose steadily, peaking each summer", "fell sharply", "went up and then down", "is a number"]) \
        == [1.5, -1.0, 0.0, 0.0]
    assert distinct_bigrams(["a b a b", "c d"]) == pytest.approx(3 / 4)


def test_a_text_harvest_stores_token_trajectories_and_resumes_without_duplicates(tmp_path):
    from conftest import tiny_llama

    from data.buffer import SOURCES, read_buffer
    from search.text_task import harvest_text

    lm = TorchLM(tiny_llama(0))
    tasks = {f"prompt={i}": TextTask.build(WordCount(), f"w1 w{i + 2}", lambda texts: [t.count("w9") for t in texts],
                                           max_tokens=5) for i in range(3)}
    config = search_config(method="maxent_ts", lam=2.0, top_k=6, n_rollouts=16, batch_size=8, n_samples=4)
    path = harvest_text(lm, dict(list(tasks.items())[:2]), config, tmp_path / "text.h5", "tiny")
    harvest_text(lm, tasks, config, path, "tiny")  # resumes: only the third prompt is searched
    buffer = read_buffer(path)
    assert buffer.prompt_keys() == list(tasks) and buffer.meta["n_actions"] == 64
    for i in range(buffer.n_trajectories):
        trajectory = buffer.trajectory(i)
        key = buffer.prompt_keys()[list(buffer.arrays["prompt_task_index"]).index(buffer.arrays["prompt_index"][i])]
        text = tasks[key].decode([trajectory["actions"].tolist()])[0]
        assert buffer.arrays["reward"][i] == text.count("w9")  # the stored actions are the tokens that were scored
    sources = set(buffer.arrays["source"].tolist())
    assert sources == {SOURCES["tree_path"], SOURCES["tree_sample"]}


def test_a_prior_text_harvest_stores_draws_of_p_cut_to_its_top_k_with_their_exact_log_q(tmp_path):
    """Issue 34's caption head: `sampler: prior` stores i.i.d. draws of p_k (p cut to its top k a step), each step's
    log p_k(a|s) recomputed here from the model's logits, log q(x) = Σ_t log p_k (they are p_k's own draws)."""
    from conftest import tiny_llama

    from data.buffer import SOURCES, read_buffer
    from search.text_task import harvest_text

    model = tiny_llama(0)
    lm = TorchLM(model)
    tasks = {f"prompt={i}": TextTask.build(WordCount(), f"w1 w{i + 2}", lambda texts: [t.count("w9") for t in texts],
                                           max_tokens=4) for i in range(3)}
    config = search_config(lam=2.0, top_k=5, batch_size=4, n_samples=6)
    path = harvest_text(lm, dict(list(tasks.items())[:2]), config, tmp_path / "prior.h5", "tiny", sampler="prior")
    harvest_text(lm, tasks, config, path, "tiny", sampler="prior")  # resumes: only the third prompt is drawn
    buffer = read_buffer(path)
    assert buffer.prompt_keys() == list(tasks) and buffer.n_trajectories == 18
    assert set(buffer.arrays["source"].tolist()) == {SOURCES["prior_sample"]}
    assert buffer.meta["sampler"] == "prior" and buffer.meta["config"]["search"]["top_k"] == 5
    for i in range(buffer.n_trajectories):
        trajectory = buffer.trajectory(i)
        key = buffer.prompt_keys()[list(buffer.arrays["prompt_task_index"]).index(buffer.arrays["prompt_index"][i])]
        prompt, actions = tasks[key].prompt_ids, trajectory["actions"].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + actions])).logits[0, len(prompt) - 1 : -1].double()
        top = logits.topk(5, dim=-1)
        kept = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
        expected = torch.log_softmax(kept, dim=-1)[torch.arange(len(actions)), actions]
        assert torch.isfinite(expected).all()  # every action was among its step's top k
        np.testing.assert_allclose(trajectory["log_prior"], expected.numpy(), atol=1e-4)
        assert buffer.arrays["log_q"][i] == pytest.approx(float(expected.sum()), abs=1e-3)
        assert buffer.arrays["reward"][i] == tasks[key].decode([actions])[0].count("w9")


def test_a_text_harvest_with_an_unknown_sampler_is_refused_before_writing(tmp_path):
    from search.text_task import harvest_text

    task = TextTask.build(WordCount(), "w1", lambda texts: [0.0] * len(texts), max_tokens=2)
    with pytest.raises(ValueError, match="sampler` must be one of .*'policy'"):
        harvest_text(None, {"a": task}, search_config(top_k=2), tmp_path / "x.h5", "tiny", sampler="policy")
    assert not (tmp_path / "x.h5").exists()


def test_caption_training_windows_end_before_the_scored_window_and_stride_apart():
    from search.caption_harvest import training_window_ends

    assert training_window_ends(95, 36, 8, 6) == [59, 53, 47, 41]  # Wooly: four whole windows fit
    assert training_window_ends(115, 36, 3, 6) == [79, 73, 67]  # at most `windows`, the latest first
    assert training_window_ends(60, 36, 8, 6) == []  # no whole window before the scored one
    for end in training_window_ends(564, 36, 8, 5):
        assert 36 <= end <= 564 - 36  # a whole window, none overlapping history[-36:]


def test_a_caption_config_with_an_unknown_method_is_refused_by_name(tmp_path):
    from sadt.config import ConfigError, load_config
    from search.caption import CaptionConfig

    path = tmp_path / "caption.yaml"
    path.write_text("methods: [ancestral, mcts]\n")
    with pytest.raises((ConfigError, ValueError), match="unknown method 'mcts'"):
        load_config(path, CaptionConfig)


@pytest.mark.base_model
def test_a_text_buffer_trains_a_head_that_a_text_search_reads(tmp_path, base_tokenizer, capsys):
    """Issue 35.3: the trainer rebuilds a text task's grammar from its buffer, so text buffers train a head too."""
    from sadt.head_io import load_value_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm
    from search.text_task import harvest_text
    from trainers import fit

    lm, _ = load_base_lm()
    rising = lambda texts: [float("up" in t or "rise" in t) for t in texts]  # noqa: E731
    tasks = {f"p{i}": TextTask.build(base_tokenizer, prompt, rising, max_tokens=3)
             for i, prompt in enumerate(["The sales went", "Prices", "Next year the numbers will"])}
    config = search_config(lam=2.0, top_k=4, n_rollouts=8, batch_size=4, n_samples=4, progress=False)
    buffer = harvest_text(lm, tasks, config, tmp_path / "text.h5", lm_fingerprint())
    common = ["--data.buffers", f"[{buffer}]", "--model.lam", "2", "--model.head.hidden", "8",
              "--model.head.layers", "1", "--model.keep_best", "false", "--data.batch_size", "8",
              "--data.val_fraction", "0", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
              "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(tmp_path / "fit"),
              "--model.save_to"]
    with pytest.raises(ValueError, match="a text-task buffer; fit it with `--model.task text`"):
        fit.main([*common, str(tmp_path / "wrong")])
    assert not (tmp_path / "wrong").exists()  # refused before anything was written
    fit.main([*common, str(tmp_path / "head"), "--model.task", "text"])
    head, card = load_value_head(tmp_path / "head", lm_fingerprint())
    assert card.codec is None and card.training["task"] == "text"
    # The action embeddings are the LM's whole output matrix: not in the head's file, read back from the LM.
    with safe_open(tmp_path / "head" / "head.safetensors", "pt") as weights:
        assert "action_embeddings" not in weights.keys() and "q_bias" in weights.keys()
    assert torch.equal(head.action_embeddings, lm.head.weight)
    assert head.q(torch.zeros(1, lm.hidden_size)).shape == (1, len(base_tokenizer))  # Q over the whole vocabulary
    twisted = search_config("twisted_smc", lam=2.0, top_k=4, n_rollouts=4, n_samples=2, progress=False)
    result = tasks["p0"].search(lm, twisted, head)
    assert len(result.samples) == 2 and np.isfinite(result.log_Z)
