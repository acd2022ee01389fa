"""`python -m trainers.fit` end to end with the real base model on a tiny harvested buffer."""

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.forward_kl_scan import ScanConfig, load_module, scan_head  # noqa: E402
from benchmarks.forward_kl_scan import run as run_scan  # noqa: E402
from data.buffer import SOURCES, read_buffer
from sadt.codec import Codec
from sadt.config import from_dict
from sadt.flow_head import FlowHeadConfig
from sadt.head_io import HeadMismatchError, head_state_equal, load_head
from sadt.lm.backend import TorchLM
from sadt.lm.base_model import lm_fingerprint, load_base_lm
from sadt.partial_reward import digit_ahead_q
from search.harvest import HarvestConfig, harvest
from trainers import fit
from trainers.data import PromptBatches, collate
from trainers.options import LossWeights


@pytest.fixture(scope="module")
def buffer_path(tmp_path_factory, base_tokenizer):
    tmp = tmp_path_factory.mktemp("fit")
    config = from_dict({
        "series": ["Wooly"], "context_length": 16, "horizon": 4, "windows_per_series": 3,
        "output": str(tmp / "h.h5"), "search": {"n_rollouts": 6, "batch_size": 6, "n_samples": 2, "lam": 2.0},
    }, HarvestConfig)
    lm, tokenizer = load_base_lm()
    return harvest(lm, Codec(tokenizer), config, lm_fingerprint())


def test_fit_trains_logs_and_writes_a_head_that_loads_back(tmp_path, buffer_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    model = fit.main([
        "--model.lam", "2.0", "--model.head.hidden", "32", "--model.save_to", str(tmp_path / "head"),
        "--data.buffers", f"[{buffer_path}]", "--data.batch_size", "8", "--data.val_fraction", "0.34",
        "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
        "--trainer.logger+=pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={out}",
        "--trainer.logger+=pytorch_lightning.loggers.WandbLogger", f"--trainer.logger.save_dir={out}",
        "--trainer.callbacks+=trainers.samples.SampleForecasts", "--trainer.callbacks.n_prompts=1",
        "--trainer.callbacks.n_samples=2",
    ])
    (metrics,) = out.glob("lightning_logs/*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    tb = [float(r["train/tb"]) for r in rows if r.get("train/tb")]
    assert len(tb) >= 3 and tb[-1] < tb[0]  # trajectory balance falls
    assert any(r.get("val/tb") for r in rows) and any(r.get("val/var_log_ratio") for r in rows)
    assert list(out.glob("wandb/offline-run-*/run-*.wandb"))  # the offline W&B run exists
    # Sampled forecasts every validation epoch: a CSV and a plot per epoch, a W&B table and image.
    samples = sorted(out.glob("lightning_logs/*/samples/epoch_*.csv"))
    assert len(samples) == 3 and len(list(out.glob("lightning_logs/*/samples/epoch_*.png"))) == 3
    rows = list(csv.DictReader(samples[-1].open()))
    assert {r["policy"] for r in rows} == {"prior", "P_F"} and len(rows) == 4
    assert all(r["forecast"].count(",") == 4 and float(r["reward"]) <= 0 for r in rows)  # horizon 4, r <= 0
    assert list(out.glob("wandb/offline-run-*/files/media/table/samples/*.table.json"))
    assert list(out.glob("wandb/offline-run-*/files/media/images/samples/*.png"))
    head, sidecar = load_head(tmp_path / "head", lm_fingerprint())
    assert head_state_equal(head, model.head) and sidecar.lam == 2.0
    # keep_best: the written head is the one of the epoch with the lowest validation loss.
    val_losses = {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(metrics.open()) if r.get("val/loss")}
    best_epoch = min(val_losses, key=val_losses.get)
    assert sidecar.best["epoch"] == best_epoch
    assert sidecar.best["val_loss"] == pytest.approx(val_losses[best_epoch], rel=1e-5)
    assert sidecar.codec == read_buffer(buffer_path).meta["config"]["codec"]
    with pytest.raises(HeadMismatchError, match="trained for LM"):
        load_head(tmp_path / "head", "another-lm")
    # Epochs after the first read the LM's features from the cache: the same as recomputing them. The cache was
    # filled from other batches (other padding), so float32 attention may differ in the last digits (transformers
    # 5.24: up to 1.6e-5); a feature of the wrong trajectory would differ by O(1).
    batch = next(iter(model.trainer.datamodule.train_dataloader()))
    assert model.features.memory and all((p, tuple(a[m].tolist())) in model.features.memory
                                       for p, a, m in zip(batch["prompts"], batch["actions"], batch["mask"]))
    cached = model.features(batch)
    model.features.memory.clear()
    for x, y in zip(cached[:3], model.features(batch)[:3]):  # a forecast's features have no support
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def fit_args(buffer_path, out, *extra):
    return [
        "--model.lam", "2.0", "--model.head.hidden", "16", "--model.save_to", str(out / "head"),
        "--data.buffers", f"[{buffer_path}]", "--data.batch_size", "8", "--data.val_fraction", "0",
        "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--trainer.logger+=pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={out}", *extra,
    ]


def test_fit_resumes_from_a_lightning_checkpoint(tmp_path, buffer_path):
    fit.main(fit_args(buffer_path, tmp_path, "--trainer.max_epochs", "1"))
    (ckpt,) = tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")
    resumed = fit.main(fit_args(buffer_path, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)))
    assert resumed.trainer.current_epoch == 2
    first_steps = resumed.trainer.global_step // 2
    assert resumed.trainer.global_step == 2 * first_steps > 0  # the second epoch continued the first


def test_fit_runs_ddp_on_two_cpu_processes(tmp_path, buffer_path):
    args = fit_args(buffer_path, tmp_path, "--trainer.max_epochs", "1", "--trainer.strategy", "ddp",
                    "--trainer.devices", "2")
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "trainers.fit", *args], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    head, _ = load_head(tmp_path / "head", lm_fingerprint())
    assert head.config.hidden == 16


def test_fit_trains_a_lora_head_that_the_search_loads(tmp_path, buffer_path, monkeypatch):
    from sadt.head_io import load_search_head
    from sadt.lora_head import LoRALM
    from search.config import search_config
    from search.forecast_task import ForecastTask

    # On the shipped head's value form: the adapter's states feed the residual MLP beside β·V⁺ᵈ.
    model = fit.main(fit_args(buffer_path, tmp_path, "--model.lora.top_layers", "1", "--model.head.value_form",
                              "soft_ahead", "--model.optimiser.lora_lr", "1e-3", "--trainer.max_steps", "4"))
    (metrics,) = tmp_path.glob("lightning_logs/*/metrics.csv")
    tb = [float(r["train/tb"]) for r in csv.DictReader(metrics.open()) if r.get("train/tb")]
    assert len(tb) == 4 and all(map(torch.isfinite, torch.tensor(tb)))
    trained_b = [p for n, p in model.peft.named_parameters() if "lora_B" in n]
    assert trained_b and max(p.abs().max().item() for p in trained_b) > 0  # zero-init B moved: the adapter trained

    lm, tokenizer = load_base_lm()
    codec = Codec(tokenizer)
    head = load_search_head(tmp_path / "head", lm_fingerprint(), read_buffer(buffer_path).meta["config"]["codec"])
    assert isinstance(head.lm, LoRALM) and head.card.adapter["kind"] == "lora"
    assert head.card.value_form.value == "soft_ahead"
    task = ForecastTask.build(codec, torch.linspace(1, 3, 16).numpy(), 4)
    config = search_config(lam=2.0, n_rollouts=4, batch_size=4, n_samples=2, hybrid="visits", progress=False)
    result = task.search(head.lm, config, head.value_head)
    assert len(result.samples) == 2 and result.nfe_tokens > 2 * 4 * 8  # both models' forwards are counted

    # An on-policy round goes on from this head: `init_from` loads its adapter too, and refuses a fit without one.
    from sadt.flow_head import FlowHeadConfig
    from sadt.lora_head import LoRAHeadConfig
    from trainers.module import FlowHeadModule

    shaped = FlowHeadConfig(hidden=16, value_form="soft_ahead")
    again = FlowHeadModule(lam=2.0, head=shaped, lora=LoRAHeadConfig(top_layers=1), init_from=str(tmp_path / "head"))
    saved = dict(model.peft.named_parameters())
    loaded = [(p, saved[n]) for n, p in again.peft.named_parameters() if "lora_" in n]
    assert loaded and all(torch.equal(p, q) for p, q in loaded)
    assert all(torch.equal(p, q) for p, q in zip(again.head.state_dict().values(), model.head.state_dict().values()))
    with pytest.raises(ValueError, match="its adapter .* is not this fit's `lora` None"):
        FlowHeadModule(lam=2.0, head=shaped, init_from=str(tmp_path / "head"))
    with pytest.raises(ValueError, match="changes the LM states that the head's residual MLP reads"):
        FlowHeadModule(lam=2.0, head=FlowHeadConfig(value_form="soft_ahead", residual=False), lora=LoRAHeadConfig())

    # As a proposal (benchmarks.proposal_quality) and in the rounds' validation (trainers.rounds), P_F draws through
    # the head's own adapted backend, p through the plain LM.
    import search.ancestral
    from benchmarks.proposal_quality import ProposalConfig, run
    from trainers.rounds import RoundsConfig, validation_log_weights

    backends, sample_policy = {}, search.ancestral.sample_policy

    def recording(lm, task, **kwargs):
        backends[kwargs["guide_lam"]] = type(lm).__name__
        return sample_policy(lm, task, **kwargs)

    monkeypatch.setattr(search.ancestral, "sample_policy", recording)
    proposal = ProposalConfig(series=["Wine"], windows_per_series=1, head=str(tmp_path / "head"), n_draws=2,
                              batch_size=2, lam=2.0, guide_scales=[1.0], look_ahead_reward=False, context_length=16,
                              horizon=4)
    rows = run(proposal, tmp_path / "proposal", keep=[])
    assert backends == {0.0: "TorchLM", 2.0: "LoRALM"}
    assert all(np.isfinite(r["ess_fraction"]) for r in rows)
    backends.clear()
    rounds = RoundsConfig(output_dir=str(tmp_path / "rounds"), initial_head=str(tmp_path / "head"), rounds=1,
                          harvest={"series": ["Wine"], "context_length": 16, "horizon": 4, "search": {"lam": 2.0}},
                          fit=[], validation_contexts=1, validation_draws=2)
    (log_w,) = validation_log_weights(lm, codec, str(tmp_path / "head"), rounds)
    assert backends == {2.0: "LoRALM"} and np.isfinite(log_w).all()


@pytest.mark.parametrize("bins, form, residual, positions",
                         [(0, "digit_ahead", True, 0), (4, "digit_ahead", True, 0), (4, "soft_ahead", False, 0),
                          (4, "soft_ahead", False, 5)])
def test_fit_with_a_value_form_trains_the_residual_over_r_and_the_search_adds_r(tmp_path, buffer_path, bins, form,
                                                                               residual, positions):
    from sadt.flow_head import MLPFlowHead
    from sadt.head_io import load_search_head, load_value_head
    from sadt.partial_reward import digits_written, shaping_value
    from search.config import search_config
    from search.forecast_task import PARAMETER_FREE_VALUES, ForecastTask

    model = fit.main(fit_args(buffer_path, tmp_path, "--model.head.value_form", form, "--trainer.max_steps", "3",
                              "--model.head.reward_weight_bins", str(bins), "--model.optimiser.weight_decay", "0.5",
                              "--model.head.residual", str(residual).lower(),
                              "--model.head.reward_weight_positions", str(positions)))
    batch = next(iter(model.trainer.datamodule.train_dataloader()))
    shaping, share, position = model.shaping(batch)
    first = position[:, 0, 0]  # every forecast starts a value: no digit written yet
    torch.testing.assert_close(first, torch.zeros_like(first))
    last = batch["mask"].sum(1) - 1  # Q(s_{T-1}, a_{T-1}) adds R(x) = r(x) (context rounded in the prompt)
    finished = shaping[torch.arange(len(last)), last, batch["actions"][torch.arange(len(last)), last]]
    torch.testing.assert_close(finished, batch["reward"], atol=0.01, rtol=0)
    done = share[torch.arange(len(last)), last, batch["actions"][torch.arange(len(last)), last]]
    torch.testing.assert_close(done, torch.ones_like(done))  # every harvested forecast finishes its horizon

    meta_codec = read_buffer(buffer_path).meta["config"]["codec"]
    head, sidecar = load_head(tmp_path / "head", lm_fingerprint(), meta_codec)
    assert head.config.value_form == form == sidecar.training["head"]["value_form"]
    assert head.config.reward_weight_bins == bins and head.config.reward_weight_positions == positions
    assert head.config.residual == residual and hasattr(head, "q_mlp") == residual  # no residual: no MLP weights
    if bins:  # β is trained, from 1, at its own lr and without weight decay pulling it towards 0
        assert head.reward_weight.shape == ((bins + 1, positions) if positions else (bins + 1,))
        assert not torch.equal(head.reward_weight, torch.ones_like(head.reward_weight))
        groups = model.trainer.optimizers[0].param_groups
        beta = [g for g in groups if any(p is model.head.reward_weight for p in g["params"])]
        assert [(g["weight_decay"], g["lr"]) for g in beta] == [(0, model.optimiser_config.reward_weight_lr)]
    with pytest.raises(RuntimeError, match="adds a task value"):
        head(torch.zeros(1, head.action_embeddings.shape[1]))  # Q_φ without R would be silently wrong
    with pytest.raises(HeadMismatchError, match="torch backend only"):
        load_search_head(tmp_path / "head", lm_fingerprint(), meta_codec, backend="mlx")
    lm, tokenizer = load_base_lm()
    task = ForecastTask.build(Codec(tokenizer), torch.linspace(1, 3, 16).numpy(), 4)
    lam = model.hparams.lam  # the soft look-ahead reads the search's λ
    value = task.value(head, lam)
    hidden, sequences = torch.randn(3, head.action_embeddings.shape[1]), [[], [1], [1, 10]]
    r, done = (torch.as_tensor(x) for x in shaping_value(task.codec, task.reward, sequences, form, lam))
    position = torch.as_tensor(digits_written(task.codec, sequences))[:, None] if positions else None
    torch.testing.assert_close(value(hidden, lambda: sequences),
                               head.q(hidden).double() + head.weigh_reward(r, done, position).double())
    name = {v: k for k, v in PARAMETER_FREE_VALUES.items()}[form]
    parameter_free = task.value(name, lam)
    torch.testing.assert_close(r, parameter_free(hidden, lambda: sequences))
    untrained = task.value(MLPFlowHead(head.action_embeddings, head.config), lam)  # zero output layer, β = 1: Q = R
    torch.testing.assert_close(untrained(hidden, lambda: sequences), parameter_free(hidden, lambda: sequences))
    config = search_config(lam=2.0, n_rollouts=4, batch_size=4, n_samples=2, hybrid="visits", progress=False)
    frozen_head, _ = load_value_head(tmp_path / "head", lm_fingerprint(), meta_codec)
    assert len(task.search(lm, config, frozen_head).samples) == 2


@pytest.fixture(scope="module")
def prior_buffer_path(tmp_path_factory, buffer_path):
    """Draws from p on the same windows as `buffer_path` (same prompt keys), 6 per window."""
    tmp = tmp_path_factory.mktemp("fit_prior")
    config = from_dict({
        "series": ["Wooly"], "context_length": 16, "horizon": 4, "windows_per_series": 3, "sampler": "prior",
        "output": str(tmp / "p.h5"), "search": {"batch_size": 6, "n_samples": 6, "lam": 2.0},
    }, HarvestConfig)
    lm, tokenizer = load_base_lm()
    return harvest(lm, Codec(tokenizer), config, lm_fingerprint())


def test_forward_kl_weighs_each_prompts_draws_from_p_by_exp_lam_r_and_trains_down(
    tmp_path, buffer_path, prior_buffer_path
):
    model = fit.main(fit_args(f"{buffer_path},{prior_buffer_path}", tmp_path, "--trainer.max_epochs", "3",
                              "--model.losses.tb", "0", "--model.losses.forward_kl", "1",
                              "--model.optimiser.lr", "0.01"))
    _, card = load_head(tmp_path / "head", lm_fingerprint())  # each buffer's harvest, in order: both rebuildable
    assert [h["sampler"] for h in card.training_data["harvests"]] == ["tree", "prior"]
    items = model.trainer.datamodule.train_set.items
    prior = [x for x in items if x["source"] == SOURCES["prior_sample"]]
    assert len(prior) == 3 * 6 and len(items) > len(prior)
    batch = collate(prior)
    weights = model.draw_weights(batch)
    for prompt in batch["prompt_index"].unique():
        rows = batch["prompt_index"] == prompt
        reward = batch["reward"][rows].double()
        # Self-normalised: ω = n exp(λ r) / Σ exp(λ r), so a prompt's weights average 1.
        torch.testing.assert_close(weights[rows], rows.sum() * torch.softmax(2.0 * reward, 0), rtol=1e-5, atol=0)
    tree = collate([x for x in items if x["source"] != SOURCES["prior_sample"]][:4])
    assert (model.draw_weights(tree) == 0).all()
    (metrics,) = tmp_path.glob("lightning_logs/*/metrics.csv")
    assert any(r.get("train/forward_kl") for r in csv.DictReader(metrics.open()))
    # Over all the training draws, KL(π*‖P_F) − KL(π*‖p) is 0 for P_F = p; the trained head is below it.
    with torch.no_grad():
        trained_kl = model.losses(batch)["forward_kl"].item()
    assert trained_kl < -0.05
    # benchmarks/forward_kl_scan.py rebuilds the module from the written head and finds the same value per
    # prompt (3 prompts, 6 draws each: the mean of their means is the batch mean); s -> 0 gives P_F = p.
    dm = model.trainer.datamodule
    rebuilt = load_module(str(tmp_path / "head"), dm, 2.0)
    rows = scan_head("h", rebuilt, dm, ScanConfig(lam=2.0, guide_scales=[1e-6, 1.0]))
    assert [r["split"] for r in rows] == ["train"] * 6  # val_fraction 0: no validation prompts
    assert np.mean([r["forward_kl"] for r in rows if r["guide_scale"] == 1.0]) == pytest.approx(trained_kl, abs=1e-5)
    assert max(abs(r["forward_kl"]) for r in rows if r["guide_scale"] < 1) < 1e-4
    # A parameter-free value scans as a module whose Q is that value along every trajectory.
    free = load_module("digit_ahead_reward", dm, 2.0)
    with torch.no_grad():
        q = free.q_values(batch)[0]
    for row in range(len(batch["prompts"])):
        path = batch["actions"][row, : int(batch["mask"][row].sum())].tolist()
        expected, _ = digit_ahead_q(free.codec, free.reward_of(batch["prompts"][row]),
                                    [path[:t] for t in range(len(path))])
        torch.testing.assert_close(q[row, : len(path)].double(), torch.as_tensor(expected), atol=1e-5, rtol=0)
    scales = ScanConfig(lam=2.0, guide_scales=[1e-6, 1.0])
    free_rows = scan_head("free", free, dm, scales)
    assert np.isfinite([r["forward_kl"] for r in free_rows]).all()
    # The scan's run hands the LM states of the first head on to the next: the same rows as each head alone.
    config = ScanConfig(buffers=[str(buffer_path), str(prior_buffer_path)], val_fraction=0.0, lam=2.0,
                        guide_scales=[1e-6, 1.0], heads={"h": str(tmp_path / "head"), "free": "digit_ahead_reward"})
    together = {(r["head"], r["prompt"], r["guide_scale"]): r["forward_kl"] for r in run_scan(config, keep=[])}
    for r in rows + free_rows:  # named "h" and "free" above too
        assert together[r["head"], r["prompt"], r["guide_scale"]] == pytest.approx(r["forward_kl"], abs=1e-6)


def test_vargrad_on_policy_takes_the_variance_over_pf_draws_only_and_refuses_buffers_without_them(
    tmp_path, buffer_path, prior_buffer_path
):
    """`losses.vargrad_on: policy`: VarGrad over the batch's `policy_sample` draws alone (ESS of i.i.d. P_F pays
    for Var_q), the same number as `losses.vargrad` on those rows; "all" takes every draw."""
    from sadt import losses as loss_fns

    with pytest.raises(ValueError, match="`vargrad_on` must be one of"):
        LossWeights(vargrad=1, vargrad_on="tree")
    with pytest.raises(ValueError, match="needs P_F's own draws"):
        fit.main(fit_args(f"{buffer_path},{prior_buffer_path}", tmp_path, "--trainer.max_epochs", "1",
                          "--model.losses.tb", "0", "--model.losses.vargrad", "1",
                          "--model.losses.vargrad_on", "policy"))
    assert not (tmp_path / "head").exists()  # refused before anything was written
    model = fit.main(fit_args(prior_buffer_path, tmp_path, "--trainer.max_epochs", "1"))
    batch = collate(model.trainer.datamodule.train_set.items)
    batch["source"][::2] = SOURCES["policy_sample"]  # every other draw relabelled as one of P_F's
    policy = batch["source"] == SOURCES["policy_sample"]
    with torch.no_grad():
        q, log_prior, _, actions = model.q_values(batch)
        columns = (q, log_prior, actions, batch["mask"], batch["reward"], batch["prompt_index"])
        by_hand = {on: loss_fns.vargrad(*(x[rows] for x in columns), 2.0)
                   for on, rows in (("policy", policy), ("all", torch.ones_like(policy)))}
        for on in ("policy", "all"):
            model.loss_weights = dataclasses.replace(model.loss_weights, vargrad_on=on)
            torch.testing.assert_close(model.losses(batch)["var_log_ratio"], by_hand[on])
    assert not torch.isclose(by_hand["policy"], by_hand["all"])


def test_forward_kl_without_draws_from_p_is_a_clear_error(tmp_path, buffer_path):
    with pytest.raises(ValueError, match="prior_sample"):
        fit.main(fit_args(buffer_path, tmp_path, "--trainer.max_epochs", "1", "--model.losses.forward_kl", "1"))


def test_the_trainer_recomputes_the_truncated_prior_the_search_sampled_under(tmp_path, base_tokenizer):
    """With `search.top_k` the buffer's per-step log p is the truncated prior's; the trainer's must match it
    (before, it renormalised over every allowed action, so TB fitted another p than the search sampled)."""
    from trainers.data import BufferDataModule
    from trainers.module import FlowHeadModule

    config = from_dict({
        "series": ["Wooly"], "context_length": 16, "horizon": 4, "windows_per_series": 1,
        "output": str(tmp_path / "k.h5"),
        "search": {"n_rollouts": 6, "batch_size": 6, "n_samples": 2, "lam": 2.0, "top_k": 3},
    }, HarvestConfig)
    lm, tokenizer = load_base_lm()
    path = harvest(lm, Codec(tokenizer), config, lm_fingerprint())
    buffer = read_buffer(path)
    stored = {tuple(buffer.trajectory(i)["actions"].tolist()): buffer.trajectory(i)["log_prior"]
              for i in range(buffer.n_trajectories)}
    dm = BufferDataModule([str(path)], val_fraction=0.0)
    dm.setup()
    module = FlowHeadModule(lam=2.0, head=FlowHeadConfig(hidden=8))
    module.attach(dm)
    assert module.features.top_k == 3
    batch = collate(dm.train_set.items)
    log_prior = module.features(batch).log_prior
    chosen = log_prior.gather(-1, batch["actions"].clamp(min=0)[..., None])[..., 0]
    for row in range(len(batch["prompts"])):
        n = int(batch["mask"][row].sum())
        expected = stored[tuple(batch["actions"][row, :n].tolist())]
        np.testing.assert_allclose(chosen[row, :n].numpy(), expected, atol=2e-4)
    assert (torch.isfinite(log_prior) & batch["mask"][..., None]).sum(-1).max() <= 3


def test_prompt_batches_cover_every_trajectory_once_in_whole_prompt_runs():
    prompt_ids = [7] * 5 + [3] * 4 + [9] * 6 + [1]  # trajectories of four prompts, as a buffer lists them
    sampler = PromptBatches(prompt_ids, batch_size=4, seed=0)
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 4 and all(len(b) <= 4 for b in batches)
        order = [i for b in batches for i in b]
        assert sorted(order) == list(range(len(prompt_ids)))
        runs = [prompt_ids[i] for k, i in enumerate(order) if k == 0 or prompt_ids[i] != prompt_ids[order[k - 1]]]
        assert sorted(runs) == [1, 3, 7, 9]  # each prompt's trajectories are one contiguous run
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # a new order every epoch
    assert list(PromptBatches(prompt_ids, 4, seed=0)) == epochs[0]  # seeded


def test_train_prompts_takes_nested_subsets_and_keeps_validation(buffer_path):
    from trainers.data import BufferDataModule

    def split(train_prompts):
        dm = BufferDataModule([str(buffer_path)], val_fraction=0.34, train_prompts=train_prompts)
        dm.setup()
        return {x["key"] for x in dm.train_set.items}, {x["key"] for x in dm.val_set.items}

    (all_train, val), (one, val_one) = split(None), split(1)
    assert len(all_train) == 2 and len(one) == 1 and one < all_train and val_one == val and not val & all_train
    with pytest.raises(ValueError, match="train_prompts` 3: .* hold only 2 training prompts"):
        split(3)


def test_a_head_fits_on_generated_contexts_end_to_end(tmp_path, monkeypatch):
    """Issue 23's path at toy size: draws from p on generated contexts, then a forward-KL + SubTB fit."""
    config = from_dict({
        "series": [], "context_length": 16, "horizon": 4, "generated": 3, "generator_seed": 5, "sampler": "prior",
        "output": str(tmp_path / "gen.h5"), "search": {"batch_size": 6, "n_samples": 6, "lam": 2.0},
    }, HarvestConfig)
    lm, tokenizer = load_base_lm()
    path = harvest(lm, Codec(tokenizer), config, lm_fingerprint())
    assert read_buffer(path).prompt_keys() == [f"series=gen5-{i}/end=16/seed=0" for i in range(3)]
    prefills, real_prefill = [], TorchLM.prefill
    monkeypatch.setattr(TorchLM, "prefill", lambda self, ids: prefills.append(1) or real_prefill(self, ids))
    model = fit.main(fit_args(path, tmp_path, "--trainer.max_epochs", "2", "--model.losses.tb", "0",
                              "--model.losses.subtb", "1", "--model.losses.forward_kl", "1",
                              "--data.batch_by_prompt", "true",
                              "--model.features.prompt_cache_size", "1", "--model.features.cache_mb", "0"))
    assert model.trainer.current_epoch == 2
    assert len(prefills) == 3 * 2  # whole prompts per batch: each prompt prefilled once an epoch, with a 1-prompt cache
    _, card = load_head(tmp_path / "head", lm_fingerprint())
    data = card.training_data  # enough to rebuild the head: the generator's seed and count, the prompts
    (recorded,) = data["harvests"]  # one per buffer
    assert recorded["generated"] == 3 and recorded["generator_seed"] == 5
    assert data["train_prompts"] == 3 and data["val_prompts"] == 0


def test_a_feature_store_lets_a_second_fit_skip_the_lm_and_fit_the_same_head(tmp_path, buffer_path, monkeypatch):
    store = tmp_path / "features"
    args = ("--trainer.max_epochs", "2", "--model.features.store", str(store))
    first = fit.main(fit_args(buffer_path, tmp_path / "first", *args))
    distinct = {(x["prompt"], tuple(x["actions"])) for x in first.trainer.datamodule.train_set.items}
    assert len(list(store.rglob("*.safetensors"))) == len(distinct) and not list(store.rglob("*.partial"))
    calls, real_path_states = [], TorchLM.path_states
    monkeypatch.setattr(TorchLM, "path_states", lambda *a, **k: calls.append(1) or real_path_states(*a, **k))
    second = fit.main(fit_args(buffer_path, tmp_path / "second", *args))
    assert not calls  # every state came from the store
    assert head_state_equal(first.head, second.head)  # the same features and seed: the same head


def test_the_flat_training_options_of_older_cards_are_read_as_the_module_groups():
    """Issue 35.3: the fit's options became groups; a head card written before them still rebuilds its module."""
    from sadt.lora_head import LoRAHeadConfig
    from trainers.module import module_options, training_settings
    from trainers.options import FeatureConfig, LossWeights, OptimiserConfig

    flat = {"lam": 15.0, "tb": 0.0, "forward_kl": 1.0, "value_form": "soft_ahead", "residual": False,
            "reward_weight_bins": 8, "reward_weight_lr": 0.05, "feature_cache_mb": 512, "adapter": "none",
            "lora_r": 8, "look_ahead": False}  # lora_r without the adapter, and an option since dropped
    options = module_options(flat)
    assert options == {"lam": 15.0, "losses": LossWeights(tb=0.0, forward_kl=1.0),
                       "head": FlowHeadConfig(value_form="soft_ahead", residual=False, reward_weight_bins=8),
                       "optimiser": OptimiserConfig(reward_weight_lr=0.05), "features": FeatureConfig(cache_mb=512)}
    assert module_options(training_settings(options)) == options  # what new cards hold reads back the same
    assert module_options({"adapter": "lora", "lora_r": 4, "lora_lr": 1e-3}) == {
        "lora": LoRAHeadConfig(r=4), "optimiser": OptimiserConfig(lora_lr=1e-3)}
