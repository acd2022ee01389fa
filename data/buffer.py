"""HDF5 trajectory buffers: flat chunked datasets plus lengths, crash-safe appends, SWMR, merging.

Layout (schema 2). Per step, S rows: `actions` (int8, or int32 over more than 127 actions, e.g. an LM's
vocabulary: `actions_dtype`), `log_prior` (float32, log p(a_t|s_t)),
`values` (float32, the tree's V̂(s_{t+1}), NaN where unknown), `visits` (int32, N(s_{t+1}), 0
where unknown). Per trajectory, n rows: `lengths` (steps), `reward`, `reward_task`,
`reward_spectral` (raw, before λ: one buffer serves any λ), `prompt_index` (the task's global
index, so shards merge without renumbering), `source` (see `SOURCES`), `log_q` (log q(x) under the policy that
drew the trajectory, exact: a draw's importance weight is p(x) e^{λ r(x)} / q(x); NaN where unknown, as for tree
paths; schema 1 had no `log_q`: such files read as NaN and gain the field when appended to). Per prompt, m rows:
`prompt_tokens` (flat) with `prompt_lengths`, `prompt_keys` (what the task was, for resuming),
`prompt_task_index`, `prompt_root_value`, and `prompt_traj_end`, the number of trajectories
committed once that prompt was complete.

Crash safety: a prompt's payload (steps, per-trajectory fields, prompt tokens) is written and
flushed first, then its `lengths`, then its `prompt_traj_end` row, the commit marker. Readers
see exactly the committed prompts; anything past the last marker is ignored. Files are written
in SWMR mode, so a trainer can read while harvesting goes on and a writer killed by SIGKILL
leaves a file that opens (read-only, SWMR); reopening it for appends first copies the committed
part to a fresh file (HDF5 refuses to reopen a crashed SWMR file for writing). One writer at a time:
a writer holds an advisory lock on `<file>.lock` (released by the kernel if it dies), and a second
writer is refused rather than mistaken for a crash. Readers open a file no writer holds without SWMR,
so a corrupt file fails at once (SWMR retries a bad checksum for minutes). A buffer records what its
trajectories mean (`data.buffer_settings`: task set, codec, reward, λ, actions); a resume or merge that
differs in any of them is refused, naming the setting.
Nothing is pickled: every field is a numeric or fixed-width bytes dataset, attributes are JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data.buffer_settings import first_difference
from data.prompt_record import KEY_BYTES, PromptRecord

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # schema 1: no `log_q`
# tree_path: a root-to-leaf path of the search tree; tree_sample: a draw from the finished tree;
# prior_sample: an ancestral draw from p(x|c), no tree (`search.harvest` with `sampler: prior`);
# policy_sample: a draw from a flow head's P_F, tempered or mixed with p (`sampler: policy`), with its log q.
SOURCES = {"tree_path": 0, "rollout": 1, "tree_sample": 2, "prior_sample": 3, "policy_sample": 4}
ADDED_IN_SCHEMA_2 = ("log_q",)

STEP_FIELDS = {"actions": np.int8, "log_prior": np.float32, "values": np.float32, "visits": np.int32}
TRAJ_FIELDS = {
    "lengths": np.int32, "reward": np.float64, "reward_task": np.float64, "reward_spectral": np.float64,
    "prompt_index": np.int64, "source": np.int8, "log_q": np.float64,
}
PROMPT_FIELDS = {
    "prompt_tokens": np.int32, "prompt_lengths": np.int32, "prompt_keys": f"S{KEY_BYTES}",
    "prompt_task_index": np.int64, "prompt_root_value": np.float64, "prompt_traj_end": np.int64,
}
ALL_FIELDS = {**STEP_FIELDS, **TRAJ_FIELDS, **PROMPT_FIELDS}
REQUIRED_ATTRS = ("schema_version", "lm_fingerprint", "meta")
class BufferError(ValueError):
    """A buffer file is foreign, corrupt or inconsistent; the message names the file and problem."""


def actions_dtype(meta: dict) -> type:
    """int8 for up to 127 actions (a codec's digits), int32 beyond (an LM's vocabulary, a text task):
    the number of actions is `meta["n_actions"]`, else the length of `meta["action_token_ids"]`."""
    n_actions = meta.get("n_actions", len(meta.get("action_token_ids", ())))
    return np.int8 if n_actions <= np.iinfo(np.int8).max else np.int32


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    values = np.asarray(values)
    if dataset.dtype.kind == "i" and values.size and values.dtype.kind in "iu":
        info = np.iinfo(dataset.dtype)
        if values.min() < info.min or values.max() > info.max:  # a cast would wrap, silently
            raise BufferError(f"`{dataset.name.lstrip('/')}` holds {dataset.dtype} values: {values.max()} does not fit "
                              f"(an action space over 127 needs the buffer's meta to say `n_actions`)")
    start = dataset.shape[0]
    dataset.resize((start + len(values),))
    dataset[start:] = np.asarray(values, dtype=dataset.dtype)


class BufferWriter:
    """Appends prompts to one HDF5 file; resumes an existing file of the same LM and schema.

    Args:
        path: the file; created if missing.
        lm_fingerprint: the LM's fingerprint (`sadt.lm.base_model.lm_fingerprint`); must match
            an existing file's.
        meta: JSON-serialisable settings stored as attributes (λ, γ, reward and codec spec, config).
    """

    def __init__(self, path: str | Path, lm_fingerprint: str, meta: dict) -> None:
        self.path = Path(path)
        self._lock = hold_writer_lock(self.path)
        try:
            if self.path.exists():
                check_stored_settings(self.path, lm_fingerprint, meta)
                self.file = self._open_for_append()
            else:
                self.file = self._create(lm_fingerprint, meta)
            self.file.swmr_mode = True
        except BaseException:
            self._lock.close()
            raise

    def _open_for_append(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "r+", libver="latest")
        except OSError:  # a writer crashed with the file open: copy the committed part, then append
            recover(self.path)
            f = h5py.File(self.path, "r+", libver="latest")
        return _upgrade(f)

    def _create(self, lm_fingerprint: str, meta: dict) -> h5py.File:
        tmp = self.path.with_name(self.path.name + ".creating")
        f = h5py.File(tmp, "w", libver="latest")
        _create_datasets(f, actions_dtype(meta))
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["lm_fingerprint"] = lm_fingerprint
        f.attrs["meta"] = json.dumps(meta, sort_keys=True)
        f.close()
        os.replace(tmp, self.path)  # the file appears complete or not at all
        return h5py.File(self.path, "r+", libver="latest")

    def done_keys(self) -> set[str]:
        """Keys of the prompts already committed (a resumed harvest skips them)."""
        m = self.file["prompt_traj_end"].shape[0]
        return {k.decode() for k in self.file["prompt_keys"][:m]}

    def append(self, record: PromptRecord) -> None:
        """Write one prompt: payload, flush, lengths, flush, commit marker, flush."""
        f = self._repair_uncommitted_tail()
        for name, values in record.columns().items():
            _append(f[name], values)
        _append(f["prompt_lengths"], [len(record.prompt_tokens)])
        _append(f["prompt_keys"], [record.key.encode()])
        _append(f["prompt_task_index"], [record.task_index])
        _append(f["prompt_root_value"], [record.root_value])
        f.flush()
        _append(f["lengths"], record.lengths)
        f.flush()
        _append(f["prompt_traj_end"], [f["lengths"].shape[0]])
        f.flush()

    def _repair_uncommitted_tail(self) -> h5py.File:
        """Cut every dataset back to the committed rows (left over by an exception mid-append)."""
        f = self.file
        sizes = committed_sizes(f)
        for name, size in sizes.items():
            if f[name].shape[0] != size:
                f[name].resize((size,))
        return f

    def close(self) -> None:
        self.file.close()
        self._lock.close()  # releases the lock

    def __enter__(self) -> BufferWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_resumable(path: str | Path, lm_fingerprint: str, meta: dict) -> None:
    """Refuse, before any work, what `BufferWriter(path, lm_fingerprint, meta)` would refuse for an existing
    file: another LM, schema or defining setting, or another process writing it (a probe of the writer's lock,
    released at once: the writer takes it again when it opens). A missing file passes (the writer creates it).

    Raises:
        BufferError: the file is being written, or was written with other settings or by another LM.
    """
    path = Path(path)
    if not path.exists():
        return
    hold_writer_lock(path).close()
    check_stored_settings(path, lm_fingerprint, meta)


def check_stored_settings(path: Path, lm_fingerprint: str, meta: dict) -> None:
    """Refuse an existing file written by another LM or schema, or with other defining settings."""
    with reading(path) as f:
        stored = check_attrs(f, path, lm_fingerprint)
    refuse_different_settings(stored, meta, f"{path} was written with", "this run has")


def hold_writer_lock(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held while the returned file stays open (the kernel
    drops it when the process dies, so a crashed writer never blocks the next one).

    Raises:
        BufferError: another process is writing `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BufferError(f"{path}: another process is writing this buffer; wait for it to finish, or write "
                          f"a shard of your own (`--shard i/n`) and merge") from None
    return lock


def refuse_different_settings(a: dict, b: dict, a_says: str, b_says: str) -> None:
    """Raise `BufferError` naming the first defining setting (`data.buffer_settings`) in which metas differ."""
    difference = first_difference(a, b)
    if difference is not None:
        key, left, right = difference
        raise BufferError(f"{a_says} {key} = {left}, {b_says} {right}: trajectories of different {key} do not "
                          f"belong in one buffer (write a new one)")


def _upgrade(f: h5py.File) -> h5py.File:
    """A schema-1 file opened for appending, made schema 2 (before SWMR: datasets cannot be added under it): its
    committed trajectories get `log_q` NaN, unknown."""
    if int(f.attrs["schema_version"]) == 1:
        n = f["lengths"].shape[0]
        for name in ADDED_IN_SCHEMA_2:
            f.create_dataset(name, data=np.full(n, np.nan, dtype=TRAJ_FIELDS[name]), maxshape=(None,), chunks=(1024,),
                             compression="lzf")
        f.attrs["schema_version"] = SCHEMA_VERSION
    return f


def _create_datasets(f: h5py.File, actions: type = np.int8) -> None:
    # Small chunks: every append rewrites the last, partly filled chunk to new space (SWMR files do
    # not reuse freed space), so 64k-element chunks bloated a 235 MiB payload to a 604 MiB file.
    for name, dtype in {**ALL_FIELDS, "actions": actions}.items():
        per_step = name in STEP_FIELDS or name == "prompt_tokens"
        f.create_dataset(
            name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096 if per_step else 1024,), compression="lzf"
        )


def open_h5(path: str | Path) -> h5py.File:
    """Open read-only: plainly when no writer has the file open, so a corrupt file fails at once (under SWMR,
    HDF5 retries a bad checksum for minutes, deaf to Ctrl-C); in SWMR mode when a writer holds it, or a
    crashed writer left it flagged as open."""
    path = Path(path)
    if not path.is_file():
        raise BufferError(f"{path}: no such buffer file")
    try:
        return h5py.File(path, "r", libver="latest", locking=False)
    except OSError as err:
        if "truncated file" in str(err):
            raise BufferError(f"{path}: truncated ({err}); the file was cut short: restore it or harvest again") \
                from None
        if "already open for write" not in str(err):
            raise BufferError(f"{path}: not a readable HDF5 file ({err})") from None
    try:
        return h5py.File(path, "r", swmr=True, libver="latest")
    except OSError as err:
        raise BufferError(f"{path}: not a readable HDF5 file ({err})") from err


@contextmanager
def reading(path: str | Path) -> Iterator[h5py.File]:
    """`open_h5(path)` as a context; an HDF5 error while reading (a bad checksum, a broken structure) becomes
    one `BufferError` naming the file."""
    with open_h5(path) as f:
        try:
            yield f
        except (OSError, KeyError, RuntimeError) as err:
            raise BufferError(f"{path}: corrupt ({err}); restore the file or harvest again") from None


def check_virtual_sources(f: h5py.File, path: Path) -> None:
    """A merged buffer's views read as zeros when a shard they point at is gone: name the missing shard."""
    for name in ALL_FIELDS:
        if name in f and f[name].is_virtual:
            for source in f[name].virtual_sources():
                shard = Path(source.file_name)
                shard = shard if shard.is_absolute() else path.parent / shard
                if source.file_name != "." and not shard.is_file():
                    raise BufferError(f"{path}: merged over shard {shard}, which is missing (moved or deleted); "
                                      f"put it back beside the merged file, or merge again")


def check_attrs(f: h5py.File, path: Path, lm_fingerprint: str | None = None) -> dict:
    """Schema version, fingerprint and datasets present; returns the meta dict."""
    missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if missing:
        raise BufferError(f"{path}: not an S-ADT buffer (attribute {missing[0]!r} missing)")
    version = int(f.attrs["schema_version"])
    if version not in READABLE_SCHEMAS:
        raise BufferError(f"{path}: schema version {version}, this code reads {READABLE_SCHEMAS}")
    if lm_fingerprint is not None and f.attrs["lm_fingerprint"] != lm_fingerprint:
        raise BufferError(
            f"{path}: written for LM {f.attrs['lm_fingerprint']!r}, not {lm_fingerprint!r}; use a buffer of this LM"
        )
    absent = [name for name in ALL_FIELDS if name not in f and not (version == 1 and name in ADDED_IN_SCHEMA_2)]
    if absent:
        raise BufferError(f"{path}: dataset {absent[0]!r} is missing")
    check_virtual_sources(f, path)
    return json.loads(f.attrs["meta"])


def committed_sizes(f: h5py.File) -> dict[str, int]:
    """Rows of each dataset that belong to committed prompts."""
    m = f["prompt_traj_end"].shape[0]
    n = int(f["prompt_traj_end"][m - 1]) if m else 0
    S = int(f["lengths"][:n].sum()) if n else 0
    P = int(f["prompt_lengths"][:m].sum()) if m else 0
    sizes = {name: S for name in STEP_FIELDS}
    sizes.update({name: n for name in TRAJ_FIELDS})
    sizes.update({name: m for name in PROMPT_FIELDS})
    sizes["prompt_tokens"] = P
    return sizes


@dataclass
class Buffer:
    """The committed contents of a buffer file, loaded into memory."""

    path: Path
    meta: dict
    lm_fingerprint: str
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def n_trajectories(self) -> int:
        return len(self.arrays["lengths"])

    @property
    def n_prompts(self) -> int:
        return len(self.arrays["prompt_traj_end"])

    @property
    def offsets(self) -> np.ndarray:
        """(n + 1,) start of each trajectory in the per-step arrays."""
        return np.concatenate([[0], np.cumsum(self.arrays["lengths"], dtype=np.int64)])

    @property
    def prompt_rows(self) -> np.ndarray:
        """(n,) the row of each trajectory's prompt (its position among the prompts), from the commit markers:
        the link that holds even where two prompts share a `prompt_task_index` (buffers of other task sets)."""
        counts = np.diff(np.concatenate([[0], self.arrays["prompt_traj_end"]]))
        return np.repeat(np.arange(self.n_prompts), counts)

    def trajectory(self, i: int) -> dict[str, np.ndarray]:
        start, stop = self.offsets[i], self.offsets[i + 1]
        out = {name: self.arrays[name][start:stop] for name in STEP_FIELDS}
        out.update({name: self.arrays[name][i] for name in TRAJ_FIELDS})
        return out

    def prompt_keys(self) -> list[str]:
        return [k.decode() for k in self.arrays["prompt_keys"]]


def read_buffer(path: str | Path, lm_fingerprint: str | None = None) -> Buffer:
    """Load the committed part of a buffer, validating it.

    Raises:
        BufferError: naming the file and the problem (foreign file, other schema or LM, missing
            dataset, lengths that do not add up).
    """
    path = Path(path)
    with reading(path) as f:
        meta = check_attrs(f, path, lm_fingerprint)
        sizes = committed_sizes(f)
        for name, size in sizes.items():
            if name in f and f[name].shape[0] < size:
                raise BufferError(f"{path}: `{name}` has {f[name].shape[0]} rows, the lengths need {size}")
        arrays = {name: f[name][:size] if name in f else np.full(size, np.nan)  # schema 1: no log_q
                  for name, size in sizes.items()}
        fingerprint = str(f.attrs["lm_fingerprint"])
    ends = arrays["prompt_traj_end"]
    if np.any(np.diff(ends) < 0) or np.any(arrays["lengths"] < 0):
        raise BufferError(f"{path}: trajectory counts are not increasing or lengths are negative")
    return Buffer(path=path, meta=meta, lm_fingerprint=fingerprint, arrays=arrays)


def recover(path: str | Path) -> None:
    """Rewrite `path` with only its committed prompts (after a crashed writer), atomically."""
    path = Path(path)
    buffer = read_buffer(path)
    tmp = path.with_name(path.name + ".recovering")
    with reading(path) as src, h5py.File(tmp, "w", libver="latest") as dst:
        _create_datasets(dst, src["actions"].dtype.type)
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        dst.attrs["schema_version"] = SCHEMA_VERSION  # every field is written, a schema-1 file's log_q as NaN
        for name, values in buffer.arrays.items():
            _append(dst[name], values)
    os.replace(tmp, path)


def iter_sources(codes: Iterable[str]) -> list[int]:
    """Source names -> codes, with a clear error for an unknown name."""
    out = []
    for name in codes:
        if name not in SOURCES:
            raise ValueError(f"unknown trajectory source {name!r}; known sources are {sorted(SOURCES)}")
        out.append(SOURCES[name])
    return out
