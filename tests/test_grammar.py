import torch

from sadt.codec import END, N_ACTIONS, SEP
from sadt.grammar import DigitGrammar


def enumerate_terminals(grammar: DigitGrammar) -> list[list[int]]:
    """Depth-first walk of every action sequence the grammar allows."""
    terminals, stack = [], [([], grammar.initial(1))]
    while stack:
        prefix, state = stack.pop()
        if state.done.item():
            terminals.append(prefix)
            continue
        for a in grammar.mask(state)[0].nonzero().flatten().tolist():
            stack.append((prefix + [a], grammar.advance(state, torch.tensor([a]))))
    return terminals


def spell(actions: list[int]) -> str:
    return "".join("0123456789"[a] if a < SEP else "," for a in actions)


def test_every_terminal_parses_and_each_forecast_has_one_spelling():
    grammar = DigitGrammar(horizon=2, max_digits=2)
    terminals = enumerate_terminals(grammar)
    forecasts = [tuple(int(v) for v in spell(t).split(",")[:-1]) for t in terminals]
    assert all(spell(t).endswith(",") and len(f) == 2 for t, f in zip(terminals, forecasts))
    assert len(terminals) == 100**2  # values 0..99 (no leading zeros), two of them
    assert len(set(forecasts)) == len(terminals)
    assert all(len(t) <= grammar.max_tokens for t in terminals)


def test_end_is_allowed_only_at_a_boundary_after_min_values():
    grammar = DigitGrammar(horizon=3, max_digits=2, min_values=1)
    state = grammar.initial(1)
    assert not grammar.mask(state)[0, END]
    state = grammar.advance(state, torch.tensor([7]))
    assert not grammar.mask(state)[0, END] and grammar.mask(state)[0, SEP]
    state = grammar.advance(state, torch.tensor([SEP]))
    assert grammar.mask(state)[0, END]
    state = grammar.advance(state, torch.tensor([END]))
    assert state.done.item() and not grammar.mask(state).any()


def test_replay_matches_step_by_step_advance():
    grammar = DigitGrammar(horizon=3, max_digits=3)
    prefixes = [[], [1, 0], [1, 0, SEP, 0, SEP], [5, SEP, 6, SEP, 7, SEP]]
    state = grammar.replay(prefixes)
    assert state.n_values.tolist() == [0, 0, 2, 3]
    assert state.n_digits.tolist() == [0, 2, 0, 0]
    assert state.value.tolist() == [0, 10, 0, 0]
    assert state.done.tolist() == [False, False, False, True]
    mask = grammar.mask(state)
    assert mask.shape == (4, N_ACTIONS)
    assert mask[1, :SEP].all() and mask[1, SEP]  # "10" may grow to "10x" or close
    assert not mask[3].any()
