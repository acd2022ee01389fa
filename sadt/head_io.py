"""Save and load a trained flow head: safetensors weights plus a JSON sidecar that says what it fits.

The sidecar holds the LM fingerprint, λ, γ, the codec, the head config and the training config;
loading a head for another LM (or codec) is an error, since Q_φ reads that LM's hidden states.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sadt.flow_head import FlowHeadConfig, MLPFlowHead, migrate_value_flags

WEIGHTS, SIDECAR = "head.safetensors", "head.json"


class HeadMismatchError(ValueError):
    """A head checkpoint was made for another LM or codec, or is unreadable; the message names the file."""


def save_head(head: MLPFlowHead, directory: str | Path, sidecar: dict) -> Path:
    """Write `head.safetensors` and `head.json` into `directory` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, directory / WEIGHTS)
    meta = {**sidecar, "head_config": vars(head.config), "head_class": type(head).__name__}
    (directory / SIDECAR).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_sidecar(directory: Path, lm_fingerprint: str, codec: dict | None = None) -> dict:
    """The checkpoint's sidecar, after checking it was trained for this LM (and codec, when given)."""
    if not (directory / SIDECAR).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory}: expected {WEIGHTS} and {SIDECAR}")
    try:
        meta = json.loads((directory / SIDECAR).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HeadMismatchError(f"{directory / SIDECAR}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise HeadMismatchError(f"{directory / SIDECAR}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("lm_fingerprint") != lm_fingerprint:
        raise HeadMismatchError(
            f"{directory}: head trained for LM {meta.get('lm_fingerprint')!r}, this LM is {lm_fingerprint!r}"
        )
    if codec is not None and meta.get("codec") != codec:
        raise HeadMismatchError(f"{directory}: head trained with codec {meta.get('codec')}, not {codec}")
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a head's safetensors file; a truncated or foreign file is one error naming it."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise HeadMismatchError(f"{path}: not a readable safetensors file ({err}); re-train or restore the head") \
            from None


def load_head(directory: str | Path, lm_fingerprint: str, codec: dict | None = None) -> tuple[MLPFlowHead, dict]:
    """The head in `directory` and its sidecar, after checking it was trained for this LM and codec."""
    directory = Path(directory)
    meta = read_sidecar(directory, lm_fingerprint, codec)
    tensors = read_weights(directory / WEIGHTS)
    try:
        config = FlowHeadConfig(**migrate_value_flags(meta["head_config"]))
        head = MLPFlowHead(tensors["action_embeddings"], config)
        head.load_state_dict(tensors)
    except KeyError as err:  # a sidecar without `head_config`, weights without the action embeddings
        raise HeadMismatchError(f"{directory}: {SIDECAR} or {WEIGHTS} lacks {err}; re-train or restore the head") \
            from None
    except (TypeError, ValueError) as err:  # an unknown or out-of-range field of `head_config`
        raise HeadMismatchError(f"{directory / SIDECAR}: `head_config` is not a valid head ({err})") from None
    except RuntimeError as err:  # load_state_dict: missing, unexpected or differently shaped tensors
        detail = " ".join(str(err).split("\n", 2)[1:2]).strip() or str(err)
        raise HeadMismatchError(f"{directory}: the weights do not match {SIDECAR}'s `head_config` ({detail})") \
            from None
    head.trained_lam = meta.get("lam")  # make_sampler warns when a search runs at another λ
    return head, meta


def load_value_head(
    directory: str | Path, lm_fingerprint: str, codec: dict | None = None, device: str | torch.device = "cpu"
) -> tuple[MLPFlowHead, dict]:
    """`load_head`, frozen and in eval mode on `device`: `head(hidden) -> Q_φ` for the search."""
    head, meta = load_head(directory, lm_fingerprint, codec)
    return head.to(device).eval().requires_grad_(False), meta


def head_state_equal(a: MLPFlowHead, b: MLPFlowHead) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@dataclass
class SearchHead:
    """A loaded flow head ready for the search: Q_φ, and the backend whose hidden states it reads."""

    value_head: Callable  # hidden (B, H) -> Q_φ (B, A)
    meta: dict  # the sidecar
    lm: object | None = None  # a LoRA head's own backend (frozen prior + adapted states); None: the run's LM


def load_search_head(
    directory: str | Path, lm_fingerprint: str, codec: dict | None = None, *, backend: str = "torch",
    device: str = "cpu", base_model: str | Path | None = None,
) -> SearchHead:
    """Any head the trainer writes, for the torch or MLX search; the sidecar is checked against the LM.

    A LoRA head comes with its own `LoRALM` on a second copy of the base model (peft injects the
    adapter in place, and the run's plain rows must stay adapter-free).
    """
    directory = Path(directory)
    meta = read_sidecar(directory, lm_fingerprint, codec)
    search_head = _load_search_head(directory, meta, lm_fingerprint, codec, backend, device, base_model)
    search_head.value_head.trained_lam = meta.get("lam")  # make_sampler warns when a search runs at another λ
    return search_head


def _load_search_head(directory: Path, meta: dict, lm_fingerprint: str, codec: dict | None, backend: str,
                      device: str, base_model: str | Path | None) -> SearchHead:
    adapter = meta.get("adapter")
    if backend == "mlx":
        if adapter:
            raise HeadMismatchError(f"{directory}: a {adapter['kind']} head runs on the torch backend only")
        form = migrate_value_flags(meta.get("head_config", {})).get("value_form", "none")
        if form != "none":
            raise HeadMismatchError(f"{directory}: a head with value form {form!r} runs on the torch backend only")
        from sadt.mlx.flow_head import MLXFlowHead

        head, _ = MLXFlowHead.load(directory, lm_fingerprint, codec)
        return SearchHead(head, meta)
    head, _ = load_value_head(directory, lm_fingerprint, codec, device)
    if not adapter:
        return SearchHead(head, meta)
    from sadt.lm.base_model import load_base_lm
    from sadt.lora_head import LoRALM, load_adapter

    base, _ = load_base_lm(base_model, device=device)
    return SearchHead(head, meta, LoRALM(load_adapter(base.model, directory), device=device))


def warn_if_other_lam(trained_lam: float | None, lam: float, head: str = "the flow head") -> None:
    """Warn when a head's λ is not the search's: Q_φ estimates soft values at the λ it was trained at."""
    if trained_lam is not None and not math.isclose(trained_lam, lam):
        warnings.warn(f"{head} was trained at λ={trained_lam:g}, the search runs at λ={lam:g}: "
                      f"Q_φ estimates soft values at its own λ", stacklevel=3)
