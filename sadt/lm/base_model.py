"""Load the fetched base model (never from a hub) as a `TorchLM` plus its tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from sadt.lm.backend import TorchLM
from sadt.lm.fetch import MANIFEST, base_model_dir, is_fetched

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


BACKENDS = ("torch", "mlx")


def check_torch_settings(dtype: str, device: str) -> None:
    """Refuse a dtype torch does not name here, or a device this machine does not have, before a model loads.

    Raises:
        ValueError: naming `dtype` or `device` and what is allowed.
    """
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` {dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` {device!r} is not a torch device (cpu, cuda, cuda:N or mps)") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r}: this machine's torch sees no CUDA GPU; use `device: cpu`")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise ValueError(f"`device` {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`device` {device!r}: MPS is not available on this machine; use `device: cpu`")
    if target.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`device` {device!r}: S-ADT runs on cpu, cuda or mps")


def load_base_lm(
    path: str | Path | None = None, *, dtype: str = "float32", device: str = "cpu", backend: str = "torch"
) -> tuple[TorchLM, object]:
    """The converted base model from `checkpoints/base/` (or `path`), as a torch or MLX backend.

    `backend="mlx"` (the `mlx` extra) runs the same weights through mlx-lm (`sadt.mlx.backend.MLXLM`,
    same contract); `dtype` and `device` are torch's and are ignored there.

    Raises:
        FileNotFoundError: when the model has not been fetched yet (run `python -m sadt.lm.fetch`).
    """
    path = Path(path) if path is not None else base_model_dir()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    tokenizer = load_base_tokenizer(path)
    if backend == "mlx":
        from sadt.mlx.backend import MLXLM

        return MLXLM.from_pretrained(path), tokenizer
    return TorchLM.from_pretrained(path, dtype=DTYPES[dtype], device=device), tokenizer


def load_base_tokenizer(path: str | Path | None = None):
    """The base model's tokenizer alone: a command can check its input with it before the model loads.

    Raises:
        FileNotFoundError: when the model has not been fetched yet (run `python -m sadt.lm.fetch`).
    """
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else base_model_dir()
    if path == base_model_dir() and not is_fetched(path):
        raise FileNotFoundError(f"{path}: no base model here; run `python -m sadt.lm.fetch` first")
    return AutoTokenizer.from_pretrained(path)


def output_embeddings(path: str | Path | None = None) -> torch.Tensor:
    """The base model's output embeddings (V, H), float32, read from its weights file alone (no model built):
    `lm_head.weight`, or the input embeddings a tied model shares with it."""
    from safetensors import safe_open

    path = Path(path) if path is not None else base_model_dir()
    with safe_open(path / "model.safetensors", "pt") as weights:
        name = "lm_head.weight" if "lm_head.weight" in weights.keys() else "model.embed_tokens.weight"
        return weights.get_tensor(name).float()


def lm_fingerprint(path: str | Path | None = None) -> str:
    """A short id of the base weights and tokenizer, stored beside buffers and heads."""
    path = Path(path) if path is not None else base_model_dir()
    manifest = path / MANIFEST
    digest = hashlib.sha256()
    if manifest.is_file():
        digest.update(json.loads(manifest.read_text())["gguf_sha256"].encode())
    digest.update((path / "tokenizer.json").read_bytes())
    return digest.hexdigest()[:16]
