"""The backend's batched, cached outputs equal plain full forwards (float64 tiny Llama)."""

import torch

from sadt.lm.backend import TorchLM

ACTIONS = torch.tensor([3, 5, 7, 11, 13])
PROMPT = [1, 9, 4, 22, 17, 8]


def full_forward(lm: TorchLM, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits over ACTIONS and final hidden state at the last position, no cache, batch 1."""
    out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0, -1, ACTIONS], out.hidden_states[-1][0, -1]


def test_cached_prompt_gives_the_full_forward_logits(tiny_lm):
    prompt = tiny_lm.prefill(PROMPT)
    batch = tiny_lm.extend(prompt, [[]], ACTIONS)
    logits, hidden = full_forward(tiny_lm, PROMPT)
    torch.testing.assert_close(batch.logits[0], logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(batch.hidden[0], hidden, rtol=0, atol=1e-10)


def test_batched_ragged_prefixes_equal_one_at_a_time(tiny_lm):
    prefixes = [[], [5], [3, 7, 11, 3], [13, 13]]
    prompt = tiny_lm.prefill(PROMPT)
    batch = tiny_lm.extend(prompt, prefixes, ACTIONS)
    for i, prefix in enumerate(prefixes):
        single = tiny_lm.extend(prompt, [prefix], ACTIONS)
        logits, _ = full_forward(tiny_lm, PROMPT + prefix)
        torch.testing.assert_close(batch.logits[i], single.logits[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.logits[i], logits, rtol=0, atol=1e-10)


def test_steps_after_padded_prefixes_equal_full_forwards(tiny_lm):
    prefixes = [[5], [3, 7, 11, 3], []]
    continuations = [[7, 3, 13], [5, 5, 11], [11, 7, 3]]
    prompt = tiny_lm.prefill(PROMPT)
    batch = tiny_lm.extend(prompt, prefixes, ACTIONS)
    for t in range(3):
        batch = tiny_lm.step(batch, torch.tensor([c[t] for c in continuations]))
        for i in range(3):
            logits, hidden = full_forward(tiny_lm, PROMPT + prefixes[i] + continuations[i][: t + 1])
            torch.testing.assert_close(batch.logits[i], logits, rtol=0, atol=1e-10)
            torch.testing.assert_close(batch.hidden[i], hidden, rtol=0, atol=1e-10)


def test_select_drops_rows_and_keeps_the_rest_exact(tiny_lm):
    prefixes = [[5], [3, 7], [11]]
    prompt = tiny_lm.prefill(PROMPT)
    batch = tiny_lm.select(tiny_lm.extend(prompt, prefixes, ACTIONS), torch.tensor([0, 2]))
    assert batch.rows.tolist() == [0, 2]
    batch = tiny_lm.step(batch, torch.tensor([13, 3]))
    for row, (i, nxt) in enumerate([(0, 13), (2, 3)]):
        logits, _ = full_forward(tiny_lm, PROMPT + prefixes[i] + [nxt])
        torch.testing.assert_close(batch.logits[row], logits, rtol=0, atol=1e-10)


def test_stats_count_forwards_and_real_tokens(tiny_lm):
    prompt = tiny_lm.prefill(PROMPT)
    batch = tiny_lm.extend(prompt, [[5], [3, 7, 11], []], ACTIONS)
    tiny_lm.step(batch, torch.tensor([3, 3, 3]))
    assert tiny_lm.stats.forward_calls == 3
    assert tiny_lm.stats.tokens == len(PROMPT) + 4 + 3  # padding is not counted


def test_path_states_give_every_state_of_every_path(tiny_lm):
    paths = [[5, 3, 7], [11], []]
    prompt = tiny_lm.prefill(PROMPT)
    hidden, logits = tiny_lm.path_states(prompt, paths, ACTIONS)
    assert hidden.shape == (3, 4, 32) and logits.shape == (3, 4, len(ACTIONS))
    for i, path in enumerate(paths):
        for t in range(len(path) + 1):
            ref_logits, ref_hidden = full_forward(tiny_lm, PROMPT + path[:t])
            torch.testing.assert_close(hidden[i, t], ref_hidden, rtol=0, atol=1e-10)
            torch.testing.assert_close(logits[i, t], ref_logits, rtol=0, atol=1e-10)


def test_a_long_decode_with_resampling_stays_exact_and_writes_in_place(tiny_lm):
    """The KV cache grows into spare room (no copy of every row per step), survives SMC's resampling with
    repeated rows and growth past its first room, and never writes into the prompt's shared cache."""
    rng = torch.Generator().manual_seed(0)
    prompt = tiny_lm.prefill(PROMPT)
    prompt_kv = [(k.clone(), v.clone()) for k, v in prompt.kv]
    paths = [[5], [3, 7], [11]]
    batch = tiny_lm.extend(prompt, paths, ACTIONS)
    moves = 0  # steps whose keys moved to a new store
    for t in range(90):
        if t % 30 == 29:  # resample: one row dropped, one repeated
            keep = torch.tensor([0, 0, 2])
            batch, paths = tiny_lm.select(batch, keep), [list(paths[i]) for i in keep.tolist()]
        before = batch.cache.layers[0].keys.data_ptr()
        nxt = ACTIONS[torch.randint(len(ACTIONS), (3,), generator=rng)]
        batch = tiny_lm.step(batch, nxt)
        moves += batch.cache.layers[0].keys.data_ptr() != before
        for path, token in zip(paths, nxt.tolist()):
            path.append(token)
        if t in (0, 28, 29, 70, 89):
            for i, path in enumerate(paths):
                logits, _ = full_forward(tiny_lm, PROMPT + path)
                torch.testing.assert_close(batch.logits[i], logits, rtol=0, atol=1e-10)
    assert moves <= 4  # the first step's copy, one growth, and the three resamples' row copies
    for (k, v), (k0, v0) in zip(prompt.kv, prompt_kv):
        assert torch.equal(k, k0) and torch.equal(v, v0)
