"""`prepare_dataset`: source -> tokenizer -> token shards -> manifest, resumable and idempotent.

Steps: fetch the raw data (downloads are kept across runs), train the BPE tokenizer on training
documents, tokenize validation then training documents into shards, and write the manifest last.
A training document whose text is also a validation document is dropped, so the splits are
disjoint by content even when a source holds duplicates. `build.json` records which tokenizer the
finished pieces belong to, so an interrupted run resumes instead of starting over; a complete
dataset whose source is unchanged makes the whole call a no-op.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .download import Progress
from .errors import PrepareError
from .profiles import Profile, dataset_dir, evolve_home, get_profile
from .shards import (
    MANIFEST,
    OFFSET_DTYPE,
    SPLITS,
    Manifest,
    ShardWriter,
    SplitStats,
    bin_path,
    file_sha256,
    idx_path,
    load_manifest,
    write_manifest,
)
from .sources import Source, doc_hash, get_source
from .tokenizer import FILENAME as TOKENIZER_FILE
from .tokenizer import Tokenizer, train_tokenizer

STATE = "build.json"
BATCH_CHARS = 4_000_000  # text handed to one multi-threaded encode_batch call
BATCH_DOCS = 4096


def _resolve(profile: Profile | str | None, source: str | Source | None, num_shards: int | None):
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    src = source if isinstance(source, Source) else get_source(source or profile.default_source)
    n = int(num_shards or profile.num_shards)
    if n < 1:
        raise PrepareError(f"--num-shards must be at least 1, got {n}")
    # EVOLVE_DATA (the trainer's pin) decides only when no source was named.
    data_dir = dataset_dir(profile, None if source is None else src.name)
    return profile, src, n, data_dir


def raw_dir(source: Source) -> Path:
    """Where a source's downloads live: `$EVOLVE_HOME/raw/<source>/` (kept across prepare runs)."""
    return evolve_home() / "raw" / source.name.replace("/", "_").replace(":", "_")


def find_prepared(
    profile: Profile | str | None = None, source: str | Source | None = None, num_shards: int | None = None
) -> Manifest | None:
    """The manifest of a complete, up-to-date dataset for these arguments, else None (cheap)."""
    profile, src, n, data_dir = _resolve(profile, source, num_shards)
    return _complete(data_dir, profile, src, src.info(n))


def _complete(data_dir: Path, profile: Profile, src: Source, info: dict) -> Manifest | None:
    try:
        manifest = load_manifest(data_dir)
    except PrepareError:
        return None
    if (manifest.profile, manifest.source, manifest.source_info) != (profile.name, src.name, info):
        return None
    tok = data_dir / TOKENIZER_FILE
    if not tok.is_file() or file_sha256(tok) != manifest.tokenizer_hash:
        return None
    for split in SPLITS:
        stats = manifest.splits.get(split) or {}
        b, i = bin_path(data_dir, split), idx_path(data_dir, split)
        if not (b.is_file() and i.is_file()):
            return None
        if b.stat().st_size != stats.get("bytes") or i.stat().st_size != 8 * (stats.get("documents", -1) + 1):
            return None
    return manifest


def prepare_dataset(
    profile: Profile | str | None = None,
    source: str | Source | None = None,
    num_shards: int | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Prepare (profile, source) into `dataset_dir` and return its manifest.

    `source` defaults to the profile's (`builtin` for tiny, `climbmix` for h100), `num_shards` to
    the profile's. Returns at once when the dataset is already complete; resumes an interrupted
    run. Every user-fixable problem is a one-line PrepareError."""
    profile, src, n, data_dir = _resolve(profile, source, num_shards)
    info = src.info(n)
    done = _complete(data_dir, profile, src, info)
    if done is not None:
        return done
    try:
        return _build(data_dir, profile, src, n, info, progress)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(data_dir if data_dir.exists() else evolve_home()).free >> 20
        raise PrepareError(
            f"disk full while preparing {data_dir} ({free} MB free); free space or set EVOLVE_HOME to a "
            "bigger disk, then rerun `evolve prepare`"
        ) from None


def _build(
    data_dir: Path, profile: Profile, src: Source, n: int, info: dict, progress: Progress | None
) -> Manifest:
    data_dir.mkdir(parents=True, exist_ok=True)
    # Whatever was complete here is for other inputs now: it stops counting as complete first.
    (data_dir / MANIFEST).unlink(missing_ok=True)
    src.fetch(raw_dir(src), n, progress)
    state = {"profile": profile.name, "source": src.name, "source_info": info}
    tok = _resumable_tokenizer(data_dir, profile, src, state, progress)

    val_hashes: set[int] = set()
    stats: dict[str, SplitStats] = {}
    for split in ("val", "train"):  # val first: training skips any document that is also in val
        cap = profile.max_val_tokens if split == "val" else profile.max_train_tokens
        finished = _finished_split(data_dir, split)
        if finished is not None:
            stats[split] = finished
            if split == "val":  # the texts already written, for the train-side duplicate check
                val_hashes.update(doc_hash(t) for t in _take(src.documents("val"), finished.documents))
            continue
        stats[split] = _write_split(data_dir, split, src, tok, profile, cap, val_hashes, progress)

    manifest = write_manifest(
        data_dir,
        profile=profile.name,
        source=src.name,
        source_info=info,
        tokenizer_hash=tok.hash,
        vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        splits=stats,
    )
    (data_dir / STATE).unlink(missing_ok=True)
    return manifest


def _take(items: Iterable[str], count: int) -> Iterator[str]:
    for i, item in enumerate(items):
        if i >= count:
            return
        yield item


def _clear(data_dir: Path) -> None:
    """Remove the files a prepare run writes here (and only those)."""
    names = [TOKENIZER_FILE, STATE, MANIFEST]
    names += [f"{split}.{ext}" for split in SPLITS for ext in ("bin", "idx")]
    for name in names:
        (data_dir / name).unlink(missing_ok=True)
        (data_dir / f"{name}.tmp").unlink(missing_ok=True)


def _resumable_tokenizer(
    data_dir: Path, profile: Profile, src: Source, state: dict, progress: Progress | None
) -> Tokenizer:
    """The tokenizer an interrupted run already trained for the same inputs, else a new one."""
    try:
        previous = json.loads((data_dir / STATE).read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and {k: previous.get(k) for k in state} == state:
        try:
            tok = Tokenizer.load(data_dir)
            if tok.hash == previous.get("tokenizer_hash") and tok.vocab_size == profile.vocab_size:
                return tok
        except PrepareError:
            pass
    _clear(data_dir)
    tok = train_tokenizer(_tokenizer_text(src, profile.tokenizer_chars, progress), profile.vocab_size)
    tok.save(data_dir)
    tmp = data_dir / f"{STATE}.tmp"
    tmp.write_text(json.dumps({**state, "tokenizer_hash": tok.hash}, sort_keys=True))
    os.replace(tmp, data_dir / STATE)
    return tok


def _tokenizer_text(src: Source, limit: int, progress: Progress | None) -> Iterator[str]:
    """Training documents up to `limit` characters in all (the last one cut)."""
    used = 0
    if progress:
        progress("tokenizer", 0, limit)
    for text in src.documents("train"):
        text = text[: limit - used]
        used += len(text)
        if progress:
            progress("tokenizer", used, limit)
        yield text
        if used >= limit:
            return


def _finished_split(data_dir: Path, split: str) -> SplitStats | None:
    """Stats of a split that an interrupted run finished (both files under their final names)."""
    b, i = bin_path(data_dir, split), idx_path(data_dir, split)
    if not (b.is_file() and i.is_file()):
        return None
    offsets = np.fromfile(i, dtype=OFFSET_DTYPE)
    if len(offsets) < 2 or int(offsets[-1]) * 2 != b.stat().st_size:
        return None
    return SplitStats(len(offsets) - 1, int(offsets[-1]), file_sha256(b), b.stat().st_size)


def _batches(docs: Iterable[str], skip: set[int]) -> Iterator[tuple[list[str], list[int]]]:
    """(texts, their hashes) in encode-sized batches, leaving out texts whose hash is in `skip`."""
    texts: list[str] = []
    hashes: list[int] = []
    chars = 0
    for text in docs:
        h = doc_hash(text)
        if h in skip:
            continue
        texts.append(text)
        hashes.append(h)
        chars += len(text)
        if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
            yield texts, hashes
            texts, hashes, chars = [], [], 0
    if texts:
        yield texts, hashes


def _write_split(
    data_dir: Path,
    split: str,
    src: Source,
    tok: Tokenizer,
    profile: Profile,
    cap: int,
    val_hashes: set[int],
    progress: Progress | None,
) -> SplitStats:
    stage = f"tokenize {split}"
    threads = os.cpu_count() or 1
    skip = val_hashes if split == "train" else set()
    if progress:
        progress(stage, 0, cap or None)
    with ShardWriter(data_dir, split, tok.bos_id, max_tokens=cap) as writer:
        for texts, hashes in _batches(src.documents(split), skip):
            for ids, h in zip(tok.encode_batch(texts, num_threads=threads), hashes, strict=True):
                more = writer.add(ids)
                if split == "val":
                    val_hashes.add(h)
                if not more:
                    break
            if progress:
                progress(stage, writer.tokens, cap or None)
            if writer.full:
                break
        need = profile.eval_tokens + profile.seq_len if split == "val" else profile.seq_len + 1
        if writer.tokens < need:
            what = "eval_tokens + seq_len" if split == "val" else "one row"
            raise PrepareError(
                f"the {split} split of {src.name} has only {writer.tokens} tokens but profile {profile.name} "
                f"needs at least {need} ({what}); give the source more text"
            )
        return writer.finish()
