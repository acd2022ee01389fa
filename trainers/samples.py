"""A callback that shows what the head has learnt: forecasts sampled from P_F^φ and from the prior.

Every `every_n_epochs` validation epochs it takes the first `n_prompts` validation prompts,
draws `n_samples` forecasts from the prior p and from the head's policy
`P_F^φ ∝ p exp(λ Q_φ)`, scores them with the buffer's own reward, and logs
- a table (epoch, prompt, policy, forecast text, reward) to W&B (`samples/table`) and as
  `<log_dir>/samples/epoch_<e>.csv`;
- a plot of the context and both policies' forecasts (`samples/plot`, and the PNG beside the CSV).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from sadt.lora_head import LoRALM
from sadt.partial_reward import ShapedValue
from sadt.rollout import rollout
from sadt.value import HeadValue

COLUMNS = ["epoch", "prompt", "policy", "forecast", "reward"]


class SampleForecasts(pl.Callback):
    """Log sampled forecasts (table + plot) from the prior and from P_F^φ during validation.

    Args:
        every_n_epochs: log on validation epochs that are multiples of this.
        n_prompts: validation prompts shown.
        n_samples: forecasts per prompt and policy.
        seed: sampling seed (the same draws each time, so epochs compare).
    """

    def __init__(self, every_n_epochs: int = 1, n_prompts: int = 2, n_samples: int = 4, seed: int = 0) -> None:
        if min(every_n_epochs, n_prompts, n_samples) < 1:
            raise ValueError("SampleForecasts needs every_n_epochs, n_prompts and n_samples >= 1")
        self.every_n_epochs, self.n_prompts, self.n_samples, self.seed = every_n_epochs, n_prompts, n_samples, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, module) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or epoch % self.every_n_epochs:
            return
        prompts = list(dict.fromkeys(item["prompt"] for item in trainer.datamodule.val_set.items))[: self.n_prompts]
        if not prompts:
            return
        rows, panels = [], []
        for i, prompt in enumerate(prompts):
            context, forecasts = self._sample(module, prompt)
            panels.append((context, forecasts))
            for policy, (texts, rewards, _) in forecasts.items():
                rows += [[epoch, i, policy, text, float(r)] for text, r in zip(texts, rewards)]
        out = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        with (out / f"epoch_{epoch}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([COLUMNS, *rows])
        figure = plot_samples(panels, out / f"epoch_{epoch}.png", f"epoch {epoch}: prior vs P_F")
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_table("samples/table", columns=COLUMNS, data=rows, step=trainer.global_step)
                logger.log_image("samples/plot", images=[str(figure)], step=trainer.global_step)

    def _sample(self, module, prompt: tuple) -> tuple[np.ndarray, dict]:
        """The scaled context and, per policy, (forecast texts, rewards, values (n, H))."""
        codec, horizon, reward = module.codec, module.grammar.horizon, module.reward_of(prompt)
        lm = module.lm if module.peft is None else LoRALM(module.peft, lm=module.lm)  # P_F reads adapted states
        cache = lm.prefill(list(prompt))
        forecasts = {}
        for policy, guide in (("prior", 0.0), ("P_F", module.hparams.lam)):
            generator = torch.Generator().manual_seed(self.seed)
            value = (ShapedValue(module.head, codec, reward, module.hparams.lam) if module.head.config.shaped
                     else HeadValue(module.head.q))
            out = rollout(
                lm, cache, module.action_token_ids, module.grammar, [[]] * self.n_samples, generator=generator,
                value_head=value, guide_lam=guide,
            )
            actions = out.actions.cpu().numpy()
            values, valid = codec.decode_actions(actions, horizon)
            forecasts[policy] = ([codec.actions_to_text(a) for a in actions], reward(values, valid).total, values)
        return reward.context, forecasts


def plot_samples(panels: list[tuple[np.ndarray, dict]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2), squeeze=False)
    colours = {"prior": "tab:grey", "P_F": "tab:blue"}
    for ax, (context, forecasts) in zip(axes[0], panels):
        ax.plot(np.arange(context.size), context, color="black", label="context")
        for policy, (_, rewards, values) in forecasts.items():
            steps = context.size + np.arange(values.shape[1])
            for j, row in enumerate(values):
                label = f"{policy} (mean r {np.mean(rewards):.2f})" if j == 0 else None
                ax.plot(steps, row, color=colours[policy], alpha=0.6, label=label)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
