"""The samplers benchmark's parts (`benchmarks.evaluation`): draws at a token budget with exact weights on the
toy, scores with exact answers, a row store that two shards share and a run resumes."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from toy_problem import ExactHead, Toy, ToyTask

from benchmarks.evaluation.draws import DrawSet, policy_draws, smc_draws, tree_draws
from benchmarks.evaluation.scoring import Reference, score
from benchmarks.evaluation.store import RowStore
from benchmarks.samplers import SamplersConfig, SamplerSpec
from sadt.config import ConfigError, load_config
from search.balance import balance_log_weights
from search.config import search_config
from search.sampler import make_sampler

LAM = 3.0


@pytest.fixture(scope="module")
def toy():
    return Toy(length=4)


def test_prior_draws_weigh_e_to_the_lambda_r_and_stop_at_the_budget(toy):
    draws = policy_draws(toy.lm, ToyTask(toy), LAM, budget=100, batch_size=8)
    x = [toy.index(a) for a in draws.actions]
    np.testing.assert_allclose(draws.log_weights, LAM * toy.table[x], atol=1e-9)
    assert np.all(np.diff(draws.tokens) >= 0) and draws.tokens[-1] >= 100 > draws.tokens[-9]
    within = draws.upto(50)
    assert within.tokens.size and within.tokens[-1] <= 50 and within.log_weights.size < draws.log_weights.size


def test_draws_of_an_exact_head_all_weigh_log_z(toy):
    """P_F of the exact soft values is π*: every weight p e^{λr} / P_F equals Z."""
    _, root = toy.target(LAM)
    draws = policy_draws(toy.lm, ToyTask(toy), LAM, budget=60, value_head=ExactHead(toy, LAM), batch_size=8)
    np.testing.assert_allclose(draws.log_weights, LAM * root, atol=1e-6)


def test_tree_draws_are_the_searchs_own_weighted_draws_in_order(toy):
    config = search_config(lam=LAM, batch_size=4, seed=2, progress=False, selection_shrink=0.0)  # balance: n0 = 0
    draws = tree_draws(toy.lm, ToyTask(toy), config, budget=40)
    search = make_sampler(toy.lm, toy.problem, config)
    while len(search.draws) < len(draws.actions):
        search.iterate(4)
    np.testing.assert_allclose(draws.log_weights, search.draw_log_weights)
    assert np.all(np.diff(draws.tokens) >= 0) and draws.tokens[-1] >= 40 and draws.tokens[0] < 40
    balanced = tree_draws(toy.lm, ToyTask(toy), config, budget=40, weights="balance")  # same seed, same tree
    np.testing.assert_allclose(balanced.log_weights, balance_log_weights(search))


def test_scores_are_exact_for_equal_weights():
    draws = DrawSet(np.full(4, -1.0), np.array([10.0, 20, 30, 40]), [[0], [1, 2], [0], [1]], np.zeros(4))
    reference = Reference(log_z=-1.5, low=-1.6, high=-1.4, khat=0.1, n_draws=100)
    task = SimpleNamespace(values=lambda actions: np.ones((len(actions), 2)))
    row = score(draws, 30, reference, task, np.array([1.0, 2.0]), np.random.default_rng(0), n_resampled=5)
    assert (row["n_draws"], row["tokens"], row["distinct"]) == (3, 30.0, 2)  # [0] drawn twice by 30 tokens
    assert row["ess"] == pytest.approx(3.0) and row["ess_per_ktoken"] == pytest.approx(100.0)
    assert row["log_z_error"] == pytest.approx(0.5)
    # Every forecast is (1, 1) against the truth (1, 2): QL_q = 2q, CRPS = 2 mean(q) / Σ|y| = 2 · 0.525 / 3.
    assert row["crps"] == pytest.approx(0.35)


def test_the_reference_is_the_log_mean_of_its_weights_with_an_interval_around_it():
    rewards = np.random.default_rng(0).uniform(-1, 0, 500)
    reference = Reference.from_prior_rewards(rewards, 5.0, np.random.default_rng(1))
    assert reference.log_z == pytest.approx(np.log(np.mean(np.exp(5 * rewards))))
    assert reference.low < reference.log_z < reference.high and reference.n_draws == 500


def test_two_shards_share_one_row_store_and_a_resumed_run_sees_both(tmp_path):
    path = tmp_path / "rows.csv"
    first, second = RowStore(path, ("window", "sampler"), resume=True), RowStore(path, ("window", "sampler"), True)
    first.add([{"window": "A", "sampler": "p", "ess": 1.0}])
    second.add([{"window": "B", "sampler": "p", "ess": 2.0}])
    first.add([{"window": "A", "sampler": "tree", "ess": 3.0}])
    resumed = RowStore(path, ("window", "sampler"), resume=True)
    assert {(r["window"], r["sampler"]) for r in resumed.rows} == {("A", "p"), ("B", "p"), ("A", "tree")}
    assert resumed.done("B", "p") and not resumed.done("B", "tree")
    assert not RowStore(path, ("window", "sampler"), resume=False).rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "rows.csv.lock"]


def test_rows_written_before_a_key_column_existed_take_its_default_and_numeric_keys_match_as_read_back(tmp_path):
    path = tmp_path / "rows.csv"
    RowStore(path, ("window", "sampler"), resume=False).add([{"window": "A", "sampler": "p", "ess": 1.0}])
    store = RowStore(path, ("window", "sampler", "repeat"), resume=True, defaults={"repeat": 0})
    assert store.done("A", "p", 0) and not store.done("A", "p", 1)
    store.add([{"window": "A", "sampler": "p", "repeat": 1, "ess": 2.0}])
    resumed = RowStore(path, ("window", "sampler", "repeat"), resume=True, defaults={"repeat": 0})
    assert resumed.done("A", "p", 1) and resumed.done("A", "p", 1.0) and not resumed.done("A", "p", 2)
    assert sorted(float(r["repeat"]) for r in resumed.rows) == [0.0, 1.0]  # the old row kept, now repeat 0


def test_a_windows_repeats_merge_into_one_row_before_any_ratio_is_taken():
    from benchmarks.evaluation.summary import grouped, noise_floor_table, paired, summary_table

    def row(sampler, repeat, ess, error, khat):
        return {"window": "A", "lam": 15.0, "sampler": sampler, "repeat": repeat, "budget": 100.0, "tokens": 100.0,
                "ess": ess, "ess_per_ktoken": 10 * ess, "log_z_error": error, "khat": khat, "crps": 0.2}

    rows = [row("p", 0, 3.0, 0.1, 0.2), row("tree", 0, 2.0, -0.2, 0.4), row("tree", 1, 8.0, 0.4, 0.8)]
    tree = grouped(rows)[15.0, "tree", 100.0]["A"]
    assert tree["ess"] == pytest.approx(4.0) and tree["ess_per_ktoken"] == pytest.approx(40.0)  # geometric
    assert tree["log_z_error"] == pytest.approx(0.3) and tree["khat"] == pytest.approx(0.6)  # mean |error|, mean
    assert tree["repeats"] == 2
    pair = paired(rows, 15.0, 100.0, "tree", "p", np.random.default_rng(0), n_boot=10)
    assert pair["ess_ratio"] == pytest.approx(4 / 3) and pair["error_gap"] == pytest.approx(0.2)
    assert "1-2 runs a window" in summary_table(rows, {"p": None, "tree": "p"}, n_boot=10)
    # The tree's second run against its first: ESS 8 / 2, |error| 0.4 − 0.2; p ran once, so no row of its own.
    assert noise_floor_table(rows, n_boot=10).splitlines()[2:] == ["| 15 | 100 | tree | 4.00 [4.00, 4.00] (1/1) | "
                                                                   "+0.20 [+0.20, +0.20] |"]


def test_first_runs_copied_from_another_run_become_repeat_0_rescored_against_this_runs_reference(tmp_path):
    from benchmarks.samplers import copy_first_runs, row_store

    source, out = tmp_path / "source", tmp_path / "out"
    RowStore(source / "rows.csv", ("window", "lam", "sampler"), resume=False).add(
        [{"window": "A", "lam": 15.0, "sampler": s, "budget": b, "log_z": -6.0, "log_z_error": 0.4}
         for s in ("iid p", "MaxEnt-TS") for b in (2500.0, 40000.0)])
    (source / "draws").mkdir()
    DrawSet(np.zeros(3), np.array([1000.0, 2000.0, 3000.0]), [[1], [2], [3]], np.zeros(3)).save(
        source / "draws" / "A.prior.npz")
    config = SamplersConfig(lams=[15.0], budgets=[2500.0], repeats=4, head=None,
                            samplers={"iid p": SamplerSpec(draws="policy")})
    with pytest.raises(ValueError, match="references.csv"):
        copy_first_runs(config, source, out)
    RowStore(out / "references.csv", ("window", "lam"), resume=False).add([{"window": "A", "lam": 15.0, "log_z": -6.5}])
    assert copy_first_runs(config, source, out) == 1  # only i.i.d. p at 2.5k: the config's sampler and budget
    (row,) = row_store(out, resume=True).rows
    assert (row["sampler"], row["budget"], int(float(row["repeat"]))) == ("iid p", 2500.0, 0)
    assert row["log_z_error"] == pytest.approx(0.5)
    assert DrawSet.load(out / "draws" / "A.prior.npz").tokens.tolist() == [1000.0, 2000.0]
    # A sampler added to the config later is copied alone: the rows already here are not doubled.
    config.samplers["MaxEnt-TS"] = SamplerSpec(draws="tree")
    assert copy_first_runs(config, source, out) == 1
    assert sorted(r["sampler"] for r in row_store(out, resume=True).rows) == ["MaxEnt-TS", "iid p"]


def test_p_draws_of_another_run_are_reused_cut_to_the_budget_and_rescored_under_this_runs_reward(tmp_path, toy):
    """Draws of p do not read r: a run that changes only the reward rescores them instead of drawing again."""
    from benchmarks.samplers import p_draws, rescored_p_draws

    source = tmp_path / "source"
    (source / "draws").mkdir(parents=True)
    drawn = policy_draws(toy.lm, ToyTask(toy), 1.0, budget=80, batch_size=8)
    drawn.save(source / "draws" / "w.prior.npz")
    task = SimpleNamespace(reward_fn=lambda actions: -np.array([float(sum(a)) for a in actions]))
    config = SamplersConfig(samplers={"iid p": SamplerSpec(draws="policy")}, p_draws_from=str(source))
    out = tmp_path / "run" / "draws" / "w.prior.npz"
    reused = p_draws(config, out, None, task, 40, seed=0)  # lm None: drawing afresh would fail
    assert out.is_file() and reused.tokens[-1] <= 40 and reused.actions == drawn.upto(40).actions
    np.testing.assert_allclose(reused.rewards, task.reward_fn(reused.actions))
    np.testing.assert_allclose(reused.at_lam(LAM).log_weights, LAM * reused.rewards)
    assert rescored_p_draws(drawn, task, 1e6) is None  # fewer tokens than the budget: not this run's draws


def test_a_config_naming_an_unknown_baseline_or_draws_kind_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("samplers:\n  tree: {draws: tree, baseline: iid p}\n")
    with pytest.raises((ConfigError, ValueError), match="baseline names no sampler"):
        load_config(bad, SamplersConfig)
    with pytest.raises(ValueError, match="draws"):
        SamplerSpec(draws="beam")
    with pytest.raises(ValueError, match="'balance' for `draws: tree` only"):
        SamplerSpec(draws="policy", weights="balance")
    with pytest.raises(ValueError, match="'dts_star' keeps no law per draw"):
        SamplerSpec(draws="tree", search={"method": "dts_star"})
    assert SamplerSpec(draws="tree", search={"method": "dts", "defensive": 0.5}).search["method"] == "dts"
    caption = tmp_path / "caption.yaml"
    caption.write_text("task: caption\ntop_k: 20\nhead: null\nreward: {record_penalty: 1.0}\n"
                       "samplers:\n  iid p: {draws: policy}\n")
    with pytest.raises((ConfigError, ValueError), match="the caption task's is its own"):
        load_config(caption, SamplersConfig)


def test_lams_and_samplers_on_the_command_line_must_be_among_the_configs(tmp_path, capsys):
    """`--lams` and `--samplers` split a long run across sessions; a λ or label the config lacks is refused,
    naming the config."""
    from benchmarks.samplers import main

    config = tmp_path / "samplers.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nlams: [15.0, 50.0]\nsamplers:\n  iid p: {{draws: policy}}\n")
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(config), "--lams", "5", "--summarise"])
    assert stopped.value.code == 2 and "must be among the config's lams [15.0, 50.0]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(config), "--samplers", "iid p", "DTS", "--summarise"])
    refusal = capsys.readouterr().err
    assert stopped.value.code == 2 and "--samplers ['DTS'] are not among the config's samplers" in refusal
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_smc_counts_each_distinct_particle_once(toy):
    """Resampling copies particles; the copies merge into one draw whose weight is their sum, Ẑ stays SMC's."""
    config = search_config(method="smc", lam=LAM, ess_threshold=1.0, seed=0, progress=False)  # resample every step
    draws = smc_draws(toy.lm, ToyTask(toy), config, particles=64)
    result = make_sampler(toy.lm, toy.problem, dataclasses.replace(config, n_rollouts=64)).run()
    distinct = {tuple(a) for a in result.particles}
    assert len(draws.actions) == len(distinct) < 64
    assert draws.log_z_hat == pytest.approx(result.log_Z)
    assert np.logaddexp.reduce(draws.log_weights) == pytest.approx(result.log_Z)  # Σ_i Ẑ W_i = Ẑ


def test_an_smc_budget_above_max_particles_is_independent_runs_pooled_by_their_z(toy):
    """24 particles at most 10 a run: three runs of 8 with seeds 5, 6, 7; log Ẑ = log mean Ẑ_k, run k's particles
    carry Ẑ_k of the pooled mass, the tokens are the three runs'; under the exact twist every Ẑ_k is Z."""
    from benchmarks.evaluation.draws import smc_run

    _, root = toy.target(LAM)
    for method, head in (("smc", None), ("twisted_smc", ExactHead(toy, LAM))):
        config = search_config(method=method, lam=LAM, seed=5, progress=False)
        pooled = smc_draws(toy.lm, ToyTask(toy), config, particles=24, value_head=head, max_particles=10)
        runs = [smc_run(toy.lm, ToyTask(toy), dataclasses.replace(config, seed=5 + k), 8, head) for k in range(3)]
        log_z = np.array([run.log_z for run in runs])
        assert pooled.log_z_hat == pytest.approx(np.log(np.mean(np.exp(log_z))))
        assert np.logaddexp.reduce(pooled.log_weights) == pytest.approx(np.logaddexp.reduce(log_z))
        assert pooled.tokens[0] == sum(run.tokens for run in runs)
        assert {tuple(a) for a in pooled.actions} == {tuple(a) for run in runs for a in run.particles}
        if head is not None:
            np.testing.assert_allclose(log_z, LAM * root, atol=1e-6)
    with pytest.raises(ValueError, match="smc_max_particles"):
        SamplersConfig(samplers={"iid p": SamplerSpec(draws="policy")}, smc_max_particles=1)


def test_a_tree_that_holds_every_sequence_stops_before_its_budget():
    small = Toy(length=2)  # 9 sequences: the tree is complete long before 10^6 tokens
    draws = tree_draws(small.lm, ToyTask(small), search_config(lam=LAM, batch_size=4, progress=False), budget=1e6)
    assert {small.index(a) for a in draws.actions} == set(range(9)) and draws.tokens[-1] < 100


def test_draws_survive_a_round_trip_to_disk(tmp_path):
    iid = DrawSet(np.array([0.5, -1.0]), np.array([4.0, 9.0]), [[1, 2], [0]], np.array([0.1, -0.3]))
    smc = DrawSet(np.array([0.0]), np.array([7.0]), [[2, 2, 1]], np.array([0.4]), log_z=-2.5)
    for draws in (iid, smc):
        draws.save(tmp_path / "d.npz")
        back = DrawSet.load(tmp_path / "d.npz")
        np.testing.assert_array_equal(back.log_weights, draws.log_weights)
        np.testing.assert_array_equal(back.tokens, draws.tokens)
        assert back.actions == draws.actions and back.log_z == draws.log_z


def test_prior_draws_under_top_k_keep_only_each_states_top_k_actions(toy):
    """With `top_k` every sampler's p is cut to its k most likely actions a step: i.i.d. draws never leave them
    and weigh e^{λr} against the truncated p (the target all samplers share)."""
    task = ToyTask(toy)
    draws = policy_draws(toy.lm, task, LAM, budget=200, batch_size=8, top_k=1)
    assert len({tuple(a) for a in draws.actions}) == 1  # k = 1: the greedy path, every draw
    np.testing.assert_allclose(draws.log_weights, LAM * np.asarray(draws.rewards), atol=1e-9)
    wide = policy_draws(toy.lm, task, LAM, budget=200, batch_size=8)
    assert len({tuple(a) for a in wide.actions}) > 1


def test_the_caption_task_needs_top_k_and_no_head_and_gives_one_text_task_per_series(base_tokenizer):
    from benchmarks.samplers import benchmark_tasks
    from search.text_task import TextTask

    samplers = {"iid p": SamplerSpec(draws="policy")}
    with pytest.raises(ValueError, match="needs `top_k`"):
        SamplersConfig(task="caption", samplers=samplers)
    with pytest.raises(ValueError, match=r"\['P_F'\] read a flow head: set `head`"):
        SamplersConfig(task="caption", top_k=20, head=None, samplers={"P_F": SamplerSpec(draws="policy", head=True)})
    with pytest.raises(ValueError, match="`task` must be one of"):
        SamplersConfig(task="captions", samplers=samplers)
    config = SamplersConfig(task="caption", top_k=20, head=None, samplers=samplers, series=["Wine", "Wooly"],
                            context_length=24)
    tasks = benchmark_tasks(config, base_tokenizer)
    assert [label for label, _, truth in tasks if truth is None] == ["Wine caption", "Wooly caption"]
    assert all(isinstance(build(), TextTask) for _, build, _ in tasks)


@pytest.mark.base_model
def test_the_samplers_benchmark_runs_on_the_caption_task(tmp_path):
    """i.i.d. p, MaxEnt-TS and SMC on a caption prompt at equal tokens: every row scored against the reference,
    no CRPS (no truth), and a rerun with --resume draws nothing again. The reference comes first from
    `--references-only` (a GPU builds long references): the cached i.i.d. p draws and one references.csv row per
    λ, log Z their log mean e^{λr}, no sampler row; the full run reads that reference back unchanged."""
    from benchmarks.evaluation.summary import headline, summary_table
    from benchmarks.samplers import run
    from sadt.importance import log_mean_exp

    samplers = {"iid p": SamplerSpec(draws="policy"),
                "MaxEnt-TS": SamplerSpec(draws="tree", search={"batch_size": 4}, baseline="iid p"),
                "SMC": SamplerSpec(draws="smc", baseline="iid p")}
    config = SamplersConfig(task="caption", top_k=5, head=None, max_tokens=6, series=["Wine"], context_length=12,
                            lams=[5.0], budgets=[400.0], reference_budget=600.0, policy_batch=16, samplers=samplers,
                            n_resampled=8)
    assert run(config, tmp_path, resume=False, shard=(0, 1), names=[]).rows == []  # `--references-only`
    (reference,) = RowStore(tmp_path / "references.csv", ("window", "lam"), resume=True).rows
    draws = DrawSet.load(tmp_path / "draws" / "Wine caption.reference.npz")
    assert draws.tokens[-1] >= 600 and float(reference["lam"]) == 5.0
    assert float(reference["log_z"]) == pytest.approx(log_mean_exp(5.0 * draws.rewards))
    assert int(float(reference["n_draws"])) == draws.rewards.size
    (tmp_path / "draws" / "Wine caption.reference.npz").unlink()  # a cache: references.csv is the record
    first = run(config, tmp_path, resume=True, shard=(0, 1), names=["iid p"]).rows  # `--samplers "iid p"`
    assert [row["sampler"] for row in first] == ["iid p"]
    assert not (tmp_path / "draws" / "Wine caption.reference.npz").exists()  # not drawn again
    assert float(first[0]["log_z_error"]) == pytest.approx(float(first[0]["log_z"]) - float(reference["log_z"]))
    rows = run(config, tmp_path, resume=True, shard=(0, 1)).rows  # the rest joins it
    assert sorted(row["sampler"] for row in rows) == ["MaxEnt-TS", "SMC", "iid p"]
    for row in rows:
        # SMC's tokens are those of the particles the budget buys, rounded: a little over it
        assert float(row["n_draws"]) >= 2 and 0 < float(row["tokens"]) <= 1.25 * 400
        assert np.isfinite(float(row["log_z_error"])) and float(row["ess"]) >= 1
        assert np.isnan(float(row["crps"]))
    # The summary of a task without truth or heads: CRPS shown as "–", no head-against-no-head headline.
    table = summary_table(rows, {name: spec.baseline for name, spec in samplers.items()})
    assert all(line.endswith("| – |") for line in table.splitlines()[2:5])
    assert headline(rows, dict.fromkeys(samplers, False)) == "(needs samplers both with and without a head)"
    resumed = run(config, tmp_path, resume=True, shard=(0, 1)).rows  # read back from rows.csv: same rows, same wall_s
    columns = ("budget", "ess", "log_z", "wall_s")
    assert [row["sampler"] for row in resumed] == [row["sampler"] for row in rows]
    np.testing.assert_array_equal([[float(row[c]) for c in columns] for row in resumed],
                                  [[float(row[c]) for c in columns] for row in rows])
    (again,) = RowStore(tmp_path / "references.csv", ("window", "lam"), resume=True).rows
    columns = ("lam", "log_z", "low", "high", "n_draws")  # (k̂ may be nan on few draws: nan != nan)
    assert [again[c] for c in columns] == [reference[c] for c in columns]
    # A second repeat of i.i.d. p: its own seed and prior-draws file, and only it runs.
    more = run(dataclasses.replace(config, repeats=2), tmp_path, resume=True, shard=(0, 1), names=["iid p"]).rows
    assert len(more) == len(rows) + 1 and (tmp_path / "draws" / "Wine caption.prior.r1.npz").exists()
    by_repeat = {int(float(r["repeat"])): r for r in more if r["sampler"] == "iid p"}
    assert sorted(by_repeat) == [0, 1] and by_repeat[0]["log_z"] != by_repeat[1]["log_z"]


def test_rows_rescored_against_a_later_reference_keep_log_z_and_drop_windows_it_lacks():
    from benchmarks.samplers import rescored

    rows = [{"window": "A", "lam": 15.0, "sampler": "iid p", "log_z": -6.0, "log_z_error": 0.4},
            {"window": "A", "lam": 50.0, "sampler": "iid p", "log_z": -20.0, "log_z_error": 3.0},
            {"window": "B", "lam": 15.0, "sampler": "iid p", "log_z": -5.0, "log_z_error": -0.1}]
    references = [{"window": "A", "lam": 15.0, "log_z": -6.25}, {"window": "A", "lam": 50.0, "log_z": -18.5}]
    out = rescored(rows, references)
    assert [(r["window"], r["lam"]) for r in out] == [("A", 15.0), ("A", 50.0)]
    assert [r["log_z_error"] for r in out] == pytest.approx([0.25, -1.5])
    assert [r["log_z"] for r in out] == [-6.0, -20.0] and rows[0]["log_z_error"] == 0.4  # the input stays as it was
