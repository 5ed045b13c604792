"""The training dataloader: BOS-aligned best-fit packing without padding, shuffling, DDP shards, devices."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from prepare.contract import RunConfig
from prepare.dataloader import BestFitPacker, DataLoader, make_loader
from prepare.errors import PrepareError
from prepare.profiles import get_profile

BOS = 1023


def make_docs(n_docs: int, min_len: int, max_len: int, seed: int = 0) -> list[np.ndarray]:
    """Documents whose 2nd and 3rd tokens spell their index, so any piece of one can be traced back."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        doc = rng.integers(0, 1000, rng.integers(min_len, max_len + 1), dtype=np.uint16)
        doc[0], doc[1], doc[2] = BOS, i // 1000, i % 1000
        docs.append(doc)
    return docs


def write_split(data_dir: Path, split: str, docs: list[np.ndarray]) -> None:
    """The documented layout: <split>.bin (uint16, concatenated), <split>.idx (int64 starts + total),
    and manifest.json (written last) describing it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate(docs).astype("<u2")
    tokens.tofile(data_dir / f"{split}.bin")
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype("<i8")
    offsets.tofile(data_dir / f"{split}.idx")
    stats = {"documents": len(docs), "tokens": len(tokens), "bytes": tokens.nbytes,
             "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}  # fmt: skip
    manifest = {"profile": "tiny", "source": "test", "source_info": {}, "tokenizer_hash": "0" * 64,
                "vocab_size": BOS + 1, "bos_id": BOS, "splits": {split: stats}, "fingerprint": "f" * 64,
                "created": "2025-01-01T00:00:00+00:00"}  # fmt: skip
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def config(
    data_dir: Path, seed: int = 42, rank: int = 0, world_size: int = 1, seq_len: int = 64
) -> RunConfig:
    profile = replace(get_profile("tiny"), seq_len=seq_len)
    return RunConfig(
        depth=2, budget=5.0, budget_unit="seconds", seed=seed, profile=profile, device="cpu",
        data_dir=data_dir, rank=rank, local_rank=rank, world_size=world_size,
    )  # fmt: skip


def trace(row: np.ndarray, docs: list[np.ndarray]) -> list[tuple[int, bool]]:
    """Split a row at its BOS tokens into (document index, whole?) pieces; fail on anything else."""
    starts = list(np.nonzero(row == BOS)[0]) + [len(row)]
    assert starts[0] == 0, "every row starts with BOS"
    pieces = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        piece = row[a:b]
        if len(piece) < 3:  # too short to name its document: only a crop that ends the row can be
            assert b == len(row), "only the last piece of a row may be cropped"
            pieces.append((-1, False))
            continue
        doc = docs[int(piece[1]) * 1000 + int(piece[2])]
        assert np.array_equal(doc[: len(piece)], piece), "every token comes from a document"
        pieces.append((int(piece[1]) * 1000 + int(piece[2]), len(piece) == len(doc)))
    return pieces


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[np.ndarray]]:
    docs = make_docs(300, 3, 50)
    write_split(tmp_path / "data", "train", docs)
    return tmp_path / "data", docs


def test_batches_are_shifted_int64_rows(data):
    data_dir, _ = data
    loader = make_loader("train", batch_size=8, cfg=config(data_dir))
    x, y = next(loader)
    assert x.shape == y.shape == (8, 64)
    assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x.is_contiguous() and y.is_contiguous()


def test_rows_are_bos_aligned_whole_documents_without_padding(data):
    data_dir, docs = data
    loader = make_loader("train", batch_size=16, cfg=config(data_dir))
    for _ in range(10):
        rows = loader.next_rows()
        assert rows.shape == (16, 65)
        for row in rows:
            pieces = trace(row, docs)
            # only the last piece of a row may be a cropped document
            assert all(whole for _, whole in pieces[:-1])
    # best fit wastes little when documents are shorter than a row
    assert loader.cropped_tokens < 0.05 * loader.tokens_served


def test_documents_longer_than_a_row_are_cropped_to_fill_it(tmp_path):
    docs = make_docs(20, 200, 300)
    write_split(tmp_path, "train", docs)
    rows = make_loader("train", batch_size=20, cfg=config(tmp_path)).next_rows()
    for row in rows:
        assert trace(row, docs) == [(trace(row, docs)[0][0], False)]  # one document, cropped


def test_order_is_shuffled_deterministically_by_seed(data):
    data_dir, _ = data
    a = make_loader("train", 8, cfg=config(data_dir, seed=1))
    b = make_loader("train", 8, cfg=config(data_dir, seed=1))
    c = make_loader("train", 8, cfg=config(data_dir, seed=2))
    first = [next(a)[0] for _ in range(3)]
    assert all(torch.equal(p, next(b)[0]) for p in first)
    assert not torch.equal(first[0], next(c)[0])
    # an explicit seed overrides the run's
    assert torch.equal(next(make_loader("train", 8, cfg=config(data_dir, seed=42), seed=1))[0], first[0])


def test_no_document_starves_whatever_its_length(data):
    """Best fit alone would leave awkward lengths in the buffer for ever; each row starts with the oldest."""
    _, docs = data
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    stream = itertools.chain.from_iterable(
        np.random.default_rng(0).permutation(len(docs)) for _ in range(100)
    )
    packer = BestFitPacker(offsets, stream, row_len=65, buffer_docs=len(docs))
    used: list[int] = []
    while len(used) < 3 * len(docs):
        starts, _ = packer.rows(16)
        used.extend(np.searchsorted(offsets, starts, side="right") - 1)
    assert set(used) == set(range(len(docs)))


def test_epochs_are_counted_and_reshuffled(data):
    data_dir, docs = data
    loader = make_loader("train", 16, cfg=config(data_dir))
    first_rows = loader.next_rows()
    while loader.epoch < 3:
        rows = loader.next_rows()
    assert loader.state["epoch"] == 3 and 2 * len(docs) <= loader.state["documents"] < 3 * len(docs)
    assert not np.array_equal(rows, first_rows)


def test_state_counts_tokens_and_batches(data):
    data_dir, _ = data
    loader = make_loader("train", 4, cfg=config(data_dir))
    for _ in range(5):
        next(loader)
    assert loader.state["batches"] == 5 and loader.state["tokens"] == 5 * 4 * 64
    assert loader.state["epoch"] == 1


def test_ranks_read_different_documents(tmp_path):
    docs = make_docs(3000, 3, 50)
    data_dir = tmp_path / "data"
    write_split(data_dir, "train", docs)
    per_rank = []
    for rank in range(2):
        loader = make_loader("train", 8, cfg=config(data_dir, rank=rank, world_size=2))
        rows = np.concatenate([loader.next_rows() for _ in range(4)])
        per_rank.append({doc for row in rows for doc, _ in trace(row, docs) if doc >= 0})
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]


def test_make_loader_reads_the_run_from_the_environment(data, monkeypatch):
    data_dir, _ = data
    monkeypatch.setenv("EVOLVE_DATA", str(data_dir))
    monkeypatch.setenv("EVOLVE_PROFILE", "tiny")
    monkeypatch.setenv("EVOLVE_DEVICE", "cpu")
    x, y = next(make_loader("train", batch_size=2))
    assert x.shape == (2, get_profile("tiny").seq_len)
    x, _ = next(make_loader("train", batch_size=2, seq_len=32))
    assert x.shape == (2, 32)


def test_missing_or_incomplete_data_says_what_to_do(tmp_path):
    with pytest.raises(PrepareError, match="evolve prepare"):
        make_loader("train", 2, cfg=config(tmp_path / "nothing"))
    write_split(tmp_path, "train", make_docs(5, 3, 10))
    (tmp_path / "manifest.json").unlink()  # an interrupted prepare: shards but no manifest
    with pytest.raises(PrepareError, match="evolve prepare"):
        make_loader("train", 2, cfg=config(tmp_path))
    write_split(tmp_path, "train", make_docs(5, 3, 10))
    with pytest.raises(PrepareError, match="unknown split"):
        make_loader("test", 2, cfg=config(tmp_path))
    with open(tmp_path / "train.bin", "ab") as f:  # a shard changed after prepare
        f.write(b"\0\0")
    with pytest.raises(PrepareError, match="evolve prepare"):
        make_loader("train", 2, cfg=config(tmp_path))


def test_throughput_outpaces_a_gpu(tmp_path):
    """A GPU step on 128 x 2048 tokens takes >= ~50 ms; the loader must take far less on one core."""
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.geometric(1 / 600, size=10_000), 8000) + 3
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = rng.integers(0, 1000, offsets[-1], dtype=np.uint16)
    tokens[offsets[:-1]] = BOS
    loader = DataLoader(tokens, offsets, batch_size=128, seq_len=2048, seed=0)
    next(loader)
    start = time.perf_counter()
    for _ in range(10):
        next(loader)
    per_batch = (time.perf_counter() - start) / 10
    assert per_batch < 0.05, f"{per_batch * 1e3:.1f} ms per batch of 128 x 2048"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu_batches(data):
    data_dir, _ = data
    gpu = make_loader("train", 8, cfg=config(data_dir), device="cuda")
    cpu = make_loader("train", 8, cfg=config(data_dir), device="cpu")
    # Queue many copies before looking at any: a pinned buffer reused too early would corrupt them.
    on_gpu = [next(gpu) for _ in range(20)]
    for xg, yg in on_gpu:
        xc, yc = next(cpu)
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_loads_the_prepared_tiny_dataset(use_tiny_data):
    """The real pipeline's output: rows begin with its BOS and hold only ids of its vocabulary."""
    from prepare.shards import load_manifest

    manifest = load_manifest(use_tiny_data)
    loader = make_loader("train", batch_size=8, device="cpu")
    x, y = next(loader)
    assert x.shape == (8, get_profile("tiny").seq_len)
    assert bool((x[:, 0] == manifest.bos_id).all())
    assert int(x.max()) < manifest.vocab_size and int(y.max()) < manifest.vocab_size
