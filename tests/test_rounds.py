"""On-policy rounds (`trainers.rounds`) end to end on the base model: each round draws from the last head,
fits on every round's draws from that head, and a rerun resumes without drawing again."""

import csv

import pytest
import torch

from data.buffer import SOURCES, read_buffer
from trainers.rounds import RoundsConfig, run_rounds

HARVEST = {"series": ["Wooly"], "windows_per_series": 2, "context_length": 16, "horizon": 4, "seeds": [0],
           "search": {"n_samples": 4, "batch_size": 4, "lam": 2.0},
           "exploration": {"tempered_share": 0.5, "prior_share": 0.25}}
FIT = ["--model.head.hidden", "8", "--model.head.layers", "1", "--model.losses.tb", "0", "--model.losses.vargrad", "1",
       "--model.keep_best", "false", "--data.batch_size", "8", "--data.val_fraction", "0", "--trainer.max_epochs",
       "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
       "--trainer.enable_checkpointing", "false"]


def write_start_head(directory, tokenizer) -> None:
    """An untrained MLP head (hidden 8, one layer) on the base model's action embeddings, at λ = 2."""
    from sadt.codec import Codec, CodecConfig
    from sadt.config import to_dict
    from sadt.flow_head import FlowHeadConfig, MLPFlowHead
    from sadt.head_card import HeadCard
    from sadt.head_io import save_head
    from sadt.lm.base_model import lm_fingerprint, load_base_lm

    lm, _ = load_base_lm()
    head = MLPFlowHead(lm.head.weight[Codec(tokenizer).action_token_ids].detach(), FlowHeadConfig(hidden=8, layers=1))
    save_head(head, directory, HeadCard.for_head(head, lm_fingerprint=lm_fingerprint(), lam=2.0,
                                                 codec=to_dict(CodecConfig())))


@pytest.mark.base_model
def test_two_rounds_draw_from_the_last_head_fit_and_resume_without_drawing_again(tmp_path, base_tokenizer,
                                                                                 monkeypatch):
    from sadt.head_io import head_state_equal, load_head
    from sadt.lm.base_model import lm_fingerprint

    monkeypatch.setenv("WANDB_MODE", "offline")
    write_start_head(tmp_path / "start", base_tokenizer)
    config = RoundsConfig(output_dir=str(tmp_path / "rounds"), initial_head=str(tmp_path / "start"), rounds=2,
                          harvest=HARVEST, fit=[*FIT, "--model.losses.forward_kl", "1", "--model.losses.forward_kl_on",
                                                "prior_and_policy"], prior_draws=3,
                          validation_contexts=1, validation_draws=4, wandb=True)  # validation reruns on resume
    rows = run_rounds(config)  # the forward KL reads prior.h5 and weighs P_F's draws by their stored log q
    prior = read_buffer(tmp_path / "rounds" / "prior.h5")
    assert (prior.arrays["source"] == SOURCES["prior_sample"]).all() and prior.n_trajectories == 2 * 3
    assert prior.prompt_keys() == read_buffer(tmp_path / "rounds" / "round_1" / "draws.h5").prompt_keys()
    assert [row["round"] for row in rows] == [0, 1, 2]
    (run,) = (tmp_path / "rounds" / "wandb").glob("offline-run-*")  # the curve went to W&B too
    assert any(run.glob("*.wandb"))
    assert all(row["var_log_w"] >= 0 and 0 < row["ess_per_draw"] <= 1 for row in rows)
    assert all(row["ess_vs_p"] > 0 for row in rows)  # against as many i.i.d. draws of p
    sizes = []
    for r in (1, 2):
        buffer = read_buffer(tmp_path / "rounds" / f"round_{r}" / "draws.h5")
        assert (buffer.arrays["source"] == SOURCES["policy_sample"]).all() and buffer.n_trajectories == 2 * 4
        assert torch.isfinite(torch.from_numpy(buffer.arrays["log_q"])).all()
        sizes.append(buffer.n_trajectories)
    first, _ = load_head(tmp_path / "rounds" / "round_1" / "head", lm_fingerprint())
    second, _ = load_head(tmp_path / "rounds" / "round_2" / "head", lm_fingerprint())
    assert not head_state_equal(first, second)  # round 2 trained on from round 1's head
    again = run_rounds(config)  # every round is done: nothing is drawn or fitted again
    assert [read_buffer(tmp_path / "rounds" / f"round_{r}" / "draws.h5").n_trajectories for r in (1, 2)] == sizes
    assert [row["var_log_w"] for row in again] == pytest.approx([row["var_log_w"] for row in rows])
    with (tmp_path / "rounds" / "rounds.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "rounds" / "rounds.png").is_file()


@pytest.mark.base_model
def test_a_tree_round_grows_hybrid_trees_on_the_last_head_and_fits_on_their_paths(tmp_path, base_tokenizer):
    """The aggregated-search variant (issue 36.1): round 1's data are MaxEnt-TS trees of the hybrid that read
    round 0's head, and SubTB on their paths moves the head."""
    from sadt.head_io import head_state_equal, load_head
    from sadt.lm.base_model import lm_fingerprint

    write_start_head(tmp_path / "start", base_tokenizer)
    harvest = {**HARVEST, "search": {"n_rollouts": 4, "batch_size": 4, "n_samples": 2, "lam": 2.0, "hybrid": "visits"}}
    subtb = [*FIT, "--model.losses.vargrad", "0", "--model.losses.subtb", "1"]
    config = RoundsConfig(output_dir=str(tmp_path / "rounds"), initial_head=str(tmp_path / "start"), rounds=1,
                          sampler="tree", replay="all", harvest=harvest, fit=subtb, validation_contexts=1,
                          validation_draws=4)
    run_rounds(config)
    trees = read_buffer(tmp_path / "rounds" / "round_1" / "draws.h5")
    sources = set(trees.arrays["source"].tolist())
    assert sources == {SOURCES["tree_path"], SOURCES["tree_sample"]} and trees.n_prompts == 2
    assert trees.meta["config"]["head"] == str(tmp_path / "start")  # the hybrid read round 0's head
    assert trees.meta["config"]["search"]["hybrid"] == "visits"
    start, _ = load_head(tmp_path / "start", lm_fingerprint())
    fitted, _ = load_head(tmp_path / "rounds" / "round_1" / "head", lm_fingerprint())
    assert not head_state_equal(start, fitted)


def test_rounds_refuse_settings_they_set_themselves():
    with pytest.raises(ValueError, match="rounds set `harvest.head` themselves"):
        RoundsConfig(harvest={"head": "x"})
    with pytest.raises(ValueError, match="harvest.search"):
        RoundsConfig(harvest={"search": {"lam": -1.0}})
    with pytest.raises(ValueError, match="`prior_draws` must be >= 0"):
        RoundsConfig(prior_draws=-1)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        RoundsConfig(sampler="trees")
    with pytest.raises(ValueError, match="`replay` must be 'all' or 'none'"):
        RoundsConfig(sampler="tree", replay="best")
    with pytest.raises(ValueError, match=r"reads one \(the hybrid\)"):  # tree rounds need a search that reads the head
        RoundsConfig(sampler="tree", replay="all", harvest=HARVEST)


def test_the_shipped_rounds_config_loads_and_starts_from_the_shipped_head():
    from sadt.config import load_config

    config = load_config("configs/rounds/soft_ahead.yaml", RoundsConfig)
    harvest = config.harvest_config(config.initial_head, "x.h5")
    assert harvest.sampler == "policy" and harvest.head == "checkpoints/heads/soft_ahead_lam15"
    assert "--model.init_from" not in config.fit  # each round sets it


@pytest.mark.parametrize("replay", ["all", "best", "none"])
def test_a_round_trains_on_its_own_draws_and_the_replay_it_asks_for(tmp_path, replay):
    """Issue 36.1: "best" replays each prompt's best draws of the earlier rounds (Hu et al.), "all" every draw."""
    import dataclasses

    import numpy as np
    from buffer_records import FINGERPRINT, META, make_record

    from data.buffer import BufferWriter
    from search.harvest import task_set
    from trainers.rounds import Round, training_data

    rounds = [Round(tmp_path / f"round_{r}") for r in (1, 2, 3)]
    for r, this in enumerate(rounds):
        record = make_record(0, n_traj=4)
        record.log_q = np.full(4, -1.0)
        record.reward = np.arange(4.0) + 10 * r  # later rounds draw better
        with BufferWriter(this.draws, FINGERPRINT, META) as writer:
            writer.append(record)
    config = RoundsConfig(replay=replay, replay_best=3, harvest=HARVEST)
    assert training_data(config, rounds[:1]) == [rounds[0].draws]  # round 1 has nothing to replay
    data = training_data(config, rounds)
    expected = {"all": [r.draws for r in rounds], "none": [rounds[2].draws],
                "best": [rounds[2].draws, rounds[2].replay]}[replay]
    assert data == expected
    with_prior = dataclasses.replace(config, prior_draws=5, output_dir=str(tmp_path))
    assert training_data(with_prior, rounds) == [*expected, tmp_path / "prior.h5"]  # p's draws in every round
    prior = with_prior.prior_harvest_config("p.h5")
    assert (prior.sampler, prior.search.n_samples, prior.search.lam) == ("prior", 5, 2.0)
    assert task_set(prior) == task_set(with_prior.harvest_config(with_prior.initial_head, "x.h5"))  # same prompts
    if replay == "best":
        kept = read_buffer(rounds[2].replay).arrays["reward"]
        assert sorted(kept.tolist()) == [11.0, 12.0, 13.0]  # the best 3 of rounds 1 and 2, not round 3's own


def test_history_validation_windows_lie_between_the_rounds_training_windows():
    """After issue 36's finding that generated validation contexts did not predict the real held-out windows."""
    import numpy as np

    from data.series import load_builtin
    from search.harvest import task_set
    from trainers.rounds import validation_contexts

    config = RoundsConfig(harvest=HARVEST, validation="history", validation_contexts=1)
    harvest = config.harvest_config(config.initial_head, "x.h5")
    history = load_builtin("Wooly").context
    (context,) = validation_contexts(config)
    ends = [end for end in range(16, history.size + 1) if np.array_equal(history[end - 16 : end], context)]
    training_ends = sorted({t.end for t in task_set(harvest)})
    assert len(ends) == 1 and training_ends[0] < ends[0] < training_ends[1]  # strictly between two of them
    with pytest.raises(ValueError, match="windows_per_series"):
        RoundsConfig(harvest={**HARVEST, "windows_per_series": 1}, validation="history")
