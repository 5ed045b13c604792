"""Token shards on disk: the writer, the manifest, and read-only access to a finished split.

A split is `<split>.bin` (every document's tokens, BOS first, concatenated as little-endian uint16)
and `<split>.idx` (int64 start offset of each document, then the total). The writer fills
`<split>.bin.tmp` / `.idx.tmp` and renames them only when the split is finished; `manifest.json`
is written after both splits, atomically, and readers refuse a directory without it. So whatever
kills a prepare run, no reader ever sees half a shard.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import PrepareError
from .profiles import dataset_dir, get_profile

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<i8")


def bin_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.bin"


def idx_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.idx"


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitStats:
    """What the manifest records about one finished split."""

    documents: int
    tokens: int
    sha256: str
    bytes: int


class ShardWriter:
    """Appends documents to `<split>.bin.tmp`/`.idx.tmp`; `finish()` renames them into place.

    Use it as a context manager: leaving the block by an exception removes the .tmp files (and a
    process killed outright leaves only .tmp files, which the next run overwrites)."""

    def __init__(self, data_dir: Path, split: str, bos_id: int, max_tokens: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.bos_id = int(bos_id)
        self.max_tokens = int(max_tokens)
        self.tokens = 0
        self.documents = 0
        self._offsets: list[int] = [0]
        self._sha = hashlib.sha256()
        self._bin = bin_path(self.data_dir, split)
        self._idx = idx_path(self.data_dir, split)
        self._file = None
        self._closed = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Opened with "wb" (truncate) so a stale .tmp from a killed run is simply overwritten.
        self._file = self._guard(lambda: open(_tmp(self._bin), "wb"))

    # A full disk is a user problem with a clear fix, not a traceback.
    def _guard(self, action):
        try:
            return action()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            self.abort()
            free = shutil.disk_usage(self.data_dir).free >> 20
            need = (self.max_tokens * TOKEN_DTYPE.itemsize) if self.max_tokens else 2 * self.bytes
            raise PrepareError(
                f"disk full while writing {self.split} tokens into {self.data_dir} ({self.bytes >> 20} MB "
                f"written, {free} MB free, about {max(need >> 20, 1)} MB needed); free space or set "
                "EVOLVE_HOME to a bigger disk, then rerun `evolve prepare`"
            ) from None

    @property
    def bytes(self) -> int:
        return self.tokens * TOKEN_DTYPE.itemsize

    @property
    def full(self) -> bool:
        return self.max_tokens > 0 and self.tokens >= self.max_tokens

    def add(self, ids: list[int] | np.ndarray) -> bool:
        """Append one document (its BOS is added here). Returns False once the token cap is reached;
        the document that crosses the cap is cut so the split holds exactly `max_tokens`."""
        if self.full:
            return False
        doc = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
        doc[0] = self.bos_id
        if len(ids):
            arr = np.asarray(ids)
            if int(arr.max()) > np.iinfo(TOKEN_DTYPE).max or int(arr.min()) < 0:
                raise PrepareError("token ids do not fit uint16; use a vocabulary of at most 65536 tokens")
            doc[1:] = arr
        if self.max_tokens:
            doc = doc[: self.max_tokens - self.tokens]
        data = doc.tobytes()
        self._guard(lambda: self._file.write(data))
        self._sha.update(data)
        self.tokens += len(doc)
        self.documents += 1
        self._offsets.append(self.tokens)
        return not self.full

    def finish(self) -> SplitStats:
        """Flush, write the index, and rename both files to their final names."""
        if self._closed:
            raise RuntimeError("ShardWriter already closed")
        self._guard(self._file.flush)
        self._guard(lambda: os.fsync(self._file.fileno()))
        self._file.close()
        offsets = np.asarray(self._offsets, dtype=OFFSET_DTYPE)
        self._guard(lambda: _tmp(self._idx).write_bytes(offsets.tobytes()))
        # .idx first, .bin last: a reader needs both, and the manifest comes after both anyway.
        os.replace(_tmp(self._idx), self._idx)
        os.replace(_tmp(self._bin), self._bin)
        self._closed = True
        return SplitStats(self.documents, self.tokens, self._sha.hexdigest(), self.bytes)

    def abort(self) -> None:
        """Close and remove the .tmp files; nothing under the final names is touched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        except (OSError, AttributeError):
            pass
        _tmp(self._bin).unlink(missing_ok=True)
        _tmp(self._idx).unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# --- the manifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The record of one complete prepared dataset; `fingerprint` identifies it in every score."""

    path: Path  # the dataset directory
    profile: str
    source: str
    source_info: dict
    tokenizer_hash: str
    vocab_size: int
    bos_id: int
    splits: dict = field(default_factory=dict)
    fingerprint: str = ""
    created: str = ""

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:16]

    def tokens(self, split: str) -> int:
        return int(self.splits[split]["tokens"])

    def documents(self, split: str) -> int:
        return int(self.splits[split]["documents"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def fingerprint(tokenizer_hash: str, splits: dict, profile: str) -> str:
    """sha256 over what makes scores comparable: tokenizer, both splits' contents, the profile."""
    h = hashlib.sha256()
    for part in (tokenizer_hash, splits["train"]["sha256"], splits["val"]["sha256"], profile):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def write_manifest(
    data_dir: Path,
    *,
    profile: str,
    source: str,
    source_info: dict,
    tokenizer_hash: str,
    vocab_size: int,
    bos_id: int,
    splits: dict[str, SplitStats],
) -> Manifest:
    """Write manifest.json last and atomically: from then on the dataset counts as complete."""
    split_dicts = {name: asdict(stats) for name, stats in splits.items()}
    manifest = Manifest(
        path=Path(data_dir),
        profile=profile,
        source=source,
        source_info=source_info,
        tokenizer_hash=tokenizer_hash,
        vocab_size=int(vocab_size),
        bos_id=int(bos_id),
        splits=split_dicts,
        fingerprint=fingerprint(tokenizer_hash, split_dicts, profile),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = Path(data_dir) / MANIFEST
    tmp = _tmp(path)
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return manifest


def _profile_hint() -> str:
    try:
        return get_profile().name
    except PrepareError:
        return "h100"


def load_manifest(data_dir: str | Path | None = None, *, hint: str | None = None) -> Manifest:
    """The manifest of a complete dataset (default: the current run's, see `dataset_dir`).

    Raises PrepareError when there is none: the directory is missing, or a prepare run never
    finished there. `hint` is the fix the error names (default: `evolve prepare` for
    $EVOLVE_PROFILE); a caller that knows the workspace's profile and source passes its own."""
    data_dir = Path(data_dir) if data_dir is not None else dataset_dir(get_profile())
    path = data_dir / MANIFEST
    hint = hint or f"run `evolve prepare --profile {_profile_hint()}`"
    if not path.is_file():
        raise PrepareError(f"no prepared data at {data_dir}; {hint}")
    try:
        raw = json.loads(path.read_text())
        fields = {k: raw[k] for k in Manifest.__dataclass_fields__ if k != "path"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"manifest {path} is unreadable ({e}); delete {data_dir} and {hint}") from None
    manifest = Manifest(path=data_dir, **fields)
    _check_split_rule(manifest)
    return manifest


def _check_split_rule(manifest: Manifest) -> None:
    """Refuse builtin data whose validation split was drawn by another rule than today's: the old
    rule (by content hash, from the whole standard library) put validation text inside the sandbox."""
    from .sources import BUILTIN_SPLIT, BuiltinSource

    info = manifest.source_info if isinstance(manifest.source_info, dict) else {}
    if manifest.source == BuiltinSource.name and info.get("split") != BUILTIN_SPLIT:
        raise PrepareError(
            f"the data at {manifest.path} was prepared by an older rule for the builtin source (a run could "
            f"read its validation text); run `evolve prepare --profile {manifest.profile} --source builtin` again"
        )


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One finished split, memory-mapped read-only."""

    name: str
    tokens: np.ndarray  # uint16 memmap of every document, BOS first
    offsets: np.ndarray  # int64, num_documents + 1 entries

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, i: int) -> np.ndarray:
        """Token ids of document `i`, its BOS included."""
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range ({self.num_documents} documents)")
        i %= self.num_documents
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def _checked_split(manifest: Manifest, split: str) -> tuple[Path, Path]:
    """The split's two files, after checking that they are there with the sizes the manifest recorded."""
    data_dir = manifest.path
    bpath, ipath = bin_path(data_dir, split), idx_path(data_dir, split)
    expected = manifest.splits.get(split, {})
    fix = f"delete {data_dir} and run `evolve prepare --profile {manifest.profile}` again"
    if not bpath.is_file() or not ipath.is_file():
        raise PrepareError(f"{split} shard missing in {data_dir}; {fix}")
    if bpath.stat().st_size != expected.get("bytes"):
        raise PrepareError(f"{bpath} does not match its manifest (size changed); {fix}")
    if ipath.stat().st_size != (expected.get("documents", -2) + 1) * OFFSET_DTYPE.itemsize:
        raise PrepareError(f"{ipath} does not match its manifest; {fix}")
    return bpath, ipath


def check_dataset(data_dir: str | Path | None = None) -> Manifest:
    """The manifest of a complete dataset whose every file is there at the size it recorded
    (what a run needs before it starts: a missing or truncated shard is the data's fault, not the
    code's). Cheap: a few `stat` calls; `open_split` checks the offsets' contents too."""
    manifest = load_manifest(data_dir)
    for split in SPLITS:
        _checked_split(manifest, split)
    if not (manifest.path / "tokenizer.json").is_file():
        raise PrepareError(
            f"tokenizer.json missing in {manifest.path}; delete it and run "
            f"`evolve prepare --profile {manifest.profile}` again"
        )
    return manifest


def open_split(data_dir: str | Path | None, split: str) -> Split:
    """Memory-map a split of a complete dataset; refuses a directory without a manifest, and files
    whose size differs from what the manifest recorded (a rewritten or truncated shard)."""
    if split not in SPLITS:
        raise PrepareError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    manifest = load_manifest(data_dir)
    bpath, ipath = _checked_split(manifest, split)
    expected = manifest.splits[split]
    offsets = np.fromfile(ipath, dtype=OFFSET_DTYPE)
    if len(offsets) != expected.get("documents", -2) + 1 or int(offsets[-1]) != expected.get("tokens"):
        fix = f"delete {manifest.path} and run `evolve prepare --profile {manifest.profile}` again"
        raise PrepareError(f"{ipath} does not match its manifest; {fix}")
    tokens = np.memmap(bpath, dtype=TOKEN_DTYPE, mode="r")
    return Split(name=split, tokens=tokens, offsets=offsets)
