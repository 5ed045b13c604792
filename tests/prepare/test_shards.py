"""Token shards: writing, the manifest, and that no half-written or altered shard is ever read."""

from __future__ import annotations

import os

import numpy as np
import pytest

from prepare.errors import PrepareError
from prepare.shards import (
    ShardWriter,
    fingerprint,
    load_manifest,
    open_split,
    write_manifest,
)
from prepare.sources import BUILTIN_SPLIT

BOS = 999


@pytest.fixture
def data_dir(tmp_path):
    """An empty dataset directory of its own (tmp_path also holds the test's EVOLVE_HOME)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


def write_dataset(data_dir, docs_by_split, cap: int = 0):
    stats = {}
    for split, docs in docs_by_split.items():
        with ShardWriter(data_dir, split, BOS, max_tokens=cap) as w:
            for ids in docs:
                if not w.add(ids):
                    break
            stats[split] = w.finish()
    return write_manifest(
        data_dir,
        profile="tiny",
        source="builtin",
        source_info={"k": 1, "split": BUILTIN_SPLIT},
        tokenizer_hash="ab" * 32,
        vocab_size=1000,
        bos_id=BOS,
        splits=stats,
    )


def test_round_trip_every_document_starts_with_bos(data_dir):
    train = [[1, 2, 3], [], [4, 5], [65000]]
    val = [[7, 8, 9, 10]]
    m = write_dataset(data_dir, {"train": train, "val": val})
    split = open_split(data_dir, "train")
    assert split.num_documents == 4
    assert split.tokens.dtype == np.uint16 and len(split.tokens) == 4 + 1 + 3 + 2 == split.num_tokens
    for i, ids in enumerate(train):
        assert split.document(i).tolist() == [BOS, *ids]
    assert split.document(-1).tolist() == [BOS, 65000]
    assert split.offsets.tolist() == [0, 4, 5, 8, 10]
    # the files follow the documented layout exactly
    assert np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r").tolist() == [BOS, 7, 8, 9, 10]
    assert np.fromfile(data_dir / "val.idx", dtype=np.int64).tolist() == [0, 5]
    loaded = load_manifest(data_dir)
    assert loaded == m
    assert loaded.splits["train"]["documents"] == 4 and loaded.splits["val"]["tokens"] == 5
    assert loaded.fingerprint == fingerprint("ab" * 32, loaded.splits, "tiny")
    assert len(loaded.short_fingerprint) == 16


def test_token_cap_cuts_exactly(data_dir):
    m = write_dataset(data_dir, {"train": [[1] * 10] * 5, "val": [[2] * 3]}, cap=25)
    assert m.tokens("train") == 25 and m.documents("train") == 3  # 11 + 11 + 3
    assert open_split(data_dir, "train").document(2).tolist() == [BOS, 1, 1]


def test_fingerprint_changes_with_the_data(data_dir):
    a = write_dataset(data_dir / "a", {"train": [[1, 2]], "val": [[3]]})
    b = write_dataset(data_dir / "b", {"train": [[1, 3]], "val": [[3]]})
    assert a.fingerprint != b.fingerprint


def test_an_interrupted_writer_leaves_only_tmp_files_that_nobody_reads(data_dir):
    w = ShardWriter(data_dir, "train", BOS)
    w.add([1, 2, 3])
    w._file.flush()  # the process dies here: no finish(), no manifest
    assert sorted(p.name for p in data_dir.iterdir()) == ["train.bin.tmp"]
    with pytest.raises(PrepareError, match="no prepared data at .*run `evolve prepare --profile"):
        load_manifest(data_dir)
    with pytest.raises(PrepareError, match="no prepared data"):
        open_split(data_dir, "train")
    # a new run simply overwrites the stale .tmp
    with ShardWriter(data_dir, "train", BOS) as again:
        again.add([4])
        again.finish()
    assert np.fromfile(data_dir / "train.bin", dtype=np.uint16).tolist() == [BOS, 4]


def test_an_exception_while_writing_removes_the_tmp_files(data_dir):
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(data_dir, "val", BOS) as w:
            w.add([1, 2])
            raise KeyboardInterrupt
    assert list(data_dir.iterdir()) == []


def test_finished_shards_without_a_manifest_are_not_read(data_dir):
    write_dataset(data_dir, {"train": [[1]], "val": [[2]]})
    (data_dir / "manifest.json").unlink()
    with pytest.raises(PrepareError, match="no prepared data"):
        open_split(data_dir, "val")


def test_a_shard_changed_after_the_manifest_is_refused(data_dir):
    write_dataset(data_dir, {"train": [[1, 2, 3, 4]], "val": [[2]]})
    with open(data_dir / "train.bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(PrepareError, match="does not match its manifest"):
        open_split(data_dir, "train")


def test_an_unreadable_manifest_is_a_one_line_error(data_dir):
    write_dataset(data_dir, {"train": [[1]], "val": [[2]]})
    (data_dir / "manifest.json").write_text("{ not json")
    with pytest.raises(PrepareError, match="unreadable") as err:
        load_manifest(data_dir)
    assert "\n" not in str(err.value)


def test_load_manifest_defaults_to_evolve_data(data_dir, monkeypatch):
    m = write_dataset(data_dir / "data", {"train": [[1]], "val": [[2]]})
    monkeypatch.setenv("EVOLVE_DATA", str(data_dir / "data"))
    assert load_manifest() == m
    assert open_split(None, "val").document(0).tolist() == [BOS, 2]


def test_ids_beyond_uint16_are_refused(data_dir):
    with ShardWriter(data_dir, "train", BOS) as w, pytest.raises(PrepareError, match="uint16"):
        w.add([70000])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce a real ENOSPC")
def test_a_full_disk_is_a_one_line_error_that_says_how_much_is_needed(data_dir):
    # /dev/full answers every write with ENOSPC: the writer's .tmp file is pointed at it.
    (data_dir / "train.bin.tmp").symlink_to("/dev/full")
    with pytest.raises(PrepareError, match=r"disk full while writing train tokens .* MB needed") as err:
        with ShardWriter(data_dir, "train", BOS, max_tokens=10_000_000) as w:
            for _ in range(100):
                w.add(list(range(1000)))
            w.finish()
    assert "\n" not in str(err.value)
    assert not (data_dir / "train.bin").exists()
