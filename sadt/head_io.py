"""Save and load a trained flow head: safetensors weights plus its card, `head.json` (`sadt.head_card`), which
says what it fits; loading a head for another LM (or codec) is an error, since Q_φ reads that LM's hidden states.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sadt.flow_head import FlowHeadConfig, MLPFlowHead
from sadt.head_card import (  # noqa: F401  (HeadMismatchError is re-exported: callers catch it from here)
    CARD_FILE,
    WEIGHTS_FILE,
    HeadCard,
    HeadMismatchError,
    ValueForm,
    read_card,
)
from sadt.value import SearchHead  # noqa: F401  (re-exported: loaders return it from here)

WEIGHTS, SIDECAR = WEIGHTS_FILE, CARD_FILE
HEAD_CLASSES = {"MLPFlowHead": MLPFlowHead}  # a card's `head_class` -> the class that loads its weights


def save_head(head: MLPFlowHead, directory: str | Path, card: HeadCard) -> Path:
    """Write `head.safetensors` and the card `head.json` into `directory` (created). A text head's action
    embeddings are the LM's whole output embedding matrix (113 MB for the base model): left out, and read back
    from the base model by `load_head`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if is_text_head(card):
        del tensors["action_embeddings"]
    save_file(tensors, directory / WEIGHTS)
    card.write(directory)
    return directory


def is_text_head(card: HeadCard) -> bool:
    """Whether the head was fitted on a text task (its actions: the LM's whole vocabulary)."""
    return card.training.get("task") == "text"


def lm_action_embeddings(directory: Path, lm_fingerprint: str) -> torch.Tensor:
    """A text head's action embeddings: the base model's output embeddings, once that model is the head's LM."""
    from sadt.lm.base_model import lm_fingerprint as base_fingerprint
    from sadt.lm.base_model import output_embeddings

    if base_fingerprint() != lm_fingerprint:
        raise HeadMismatchError(f"{directory}: a text head reads its action embeddings from the base model in "
                                f"checkpoints/base, which is not the LM {lm_fingerprint} it was trained for")
    return output_embeddings()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a head's safetensors file; a truncated or foreign file is one error naming it."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise HeadMismatchError(f"{path}: not a readable safetensors file ({err}); re-train or restore the head") \
            from None


def load_head(directory: str | Path, lm_fingerprint: str, codec: dict | None = None) -> tuple[MLPFlowHead, HeadCard]:
    """The head in `directory` and its card, after checking it was trained for this LM and codec."""
    directory = Path(directory)
    card = read_card(directory, lm_fingerprint, codec)
    tensors = read_weights(directory / WEIGHTS)
    if is_text_head(card) and "action_embeddings" not in tensors:
        tensors["action_embeddings"] = lm_action_embeddings(directory, lm_fingerprint)
    if card.head_class not in HEAD_CLASSES:
        raise HeadMismatchError(f"{directory / SIDECAR}: `head_class` {card.head_class!r} is not one of "
                                f"{sorted(HEAD_CLASSES)}")
    try:
        config = FlowHeadConfig(**card.head_config)
        head = HEAD_CLASSES[card.head_class](tensors["action_embeddings"], config)
        head.load_state_dict(tensors)
    except KeyError as err:  # weights without the action embeddings
        raise HeadMismatchError(f"{directory}: {WEIGHTS} lacks {err}; re-train or restore the head") from None
    except (TypeError, ValueError) as err:  # an unknown or out-of-range field of `head_config`
        raise HeadMismatchError(f"{directory / SIDECAR}: `head_config` is not a valid head ({err})") from None
    except RuntimeError as err:  # load_state_dict: missing, unexpected or differently shaped tensors
        detail = " ".join(str(err).split("\n", 2)[1:2]).strip() or str(err)
        raise HeadMismatchError(f"{directory}: the weights do not match {SIDECAR}'s `head_config` ({detail})") \
            from None
    return head, card


def load_value_head(
    directory: str | Path, lm_fingerprint: str, codec: dict | None = None, device: str | torch.device = "cpu"
) -> tuple[MLPFlowHead, HeadCard]:
    """`load_head`, frozen and in eval mode on `device`: `head(hidden) -> Q_φ` for the search."""
    head, card = load_head(directory, lm_fingerprint, codec)
    return head.to(device).eval().requires_grad_(False), card


def head_state_equal(a: MLPFlowHead, b: MLPFlowHead) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load_search_head(
    directory: str | Path, lm_fingerprint: str, codec: dict | None = None, *, backend: str = "torch",
    device: str = "cpu", base_model: str | Path | None = None,
) -> SearchHead:
    """Any head the trainer writes, for the torch or MLX search; the sidecar is checked against the LM.

    A LoRA head comes with its own `LoRALM` on a second copy of the base model (peft injects the
    adapter in place, and the run's plain rows must stay adapter-free).
    """
    directory = Path(directory)
    card = read_card(directory, lm_fingerprint, codec)
    return _load_search_head(directory, card, lm_fingerprint, codec, backend, device, base_model)


def _load_search_head(directory: Path, card: HeadCard, lm_fingerprint: str, codec: dict | None, backend: str,
                      device: str, base_model: str | Path | None) -> SearchHead:
    adapter = card.adapter
    if backend == "mlx":
        if adapter:
            raise HeadMismatchError(f"{directory}: a {adapter['kind']} head runs on the torch backend only")
        if card.value_form is not ValueForm.NONE:
            raise HeadMismatchError(f"{directory}: a head with value form {card.value_form.value!r} runs on the "
                                    f"torch backend only")
        from sadt.mlx.flow_head import MLXFlowHead

        head, _ = MLXFlowHead.load(directory, lm_fingerprint, codec)
        return SearchHead(head, card)
    head, _ = load_value_head(directory, lm_fingerprint, codec, device)
    if not adapter:
        return SearchHead(head, card)
    from sadt.lm.base_model import load_base_lm
    from sadt.lora_head import LoRALM, load_adapter

    base, _ = load_base_lm(base_model, device=device)
    return SearchHead(head, card, LoRALM(load_adapter(base.model, directory), device=device))


def warn_if_other_lam(trained_lam: float | None, lam: float, head: str = "the flow head") -> None:
    """Warn when a head's λ is not the search's: Q_φ estimates soft values at the λ it was trained at."""
    if trained_lam is not None and not math.isclose(trained_lam, lam):
        warnings.warn(f"{head} was trained at λ={trained_lam:g}, the search runs at λ={lam:g}: "
                      f"Q_φ estimates soft values at its own λ", stacklevel=3)
