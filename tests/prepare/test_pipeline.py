"""prepare_dataset end to end: real tokenizer and shards, disjoint splits, no-op, resume, bad input."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prepare.errors import PrepareError
from prepare.integrity import dataset_hash, package_hash
from prepare.pipeline import find_prepared, prepare_dataset
from prepare.profiles import dataset_dir, get_profile
from prepare.shards import check_dataset, fingerprint, load_manifest, open_split
from prepare.sources import BUILTIN_SPLIT, CLIMBMIX_VAL_SHARD, BuiltinSource, shard_name
from prepare.tokenizer import Tokenizer

# A profile small enough for a few KB of text (the real tiny profile needs ~33K val tokens).
SMALL = replace(
    get_profile("tiny"),
    vocab_size=300,
    seq_len=16,
    eval_tokens=64,
    tokenizer_chars=200_000,
    max_train_tokens=0,
    max_val_tokens=0,
)


def doc_keys(split) -> set[bytes]:
    """A content key per document: its token bytes (tokenization is deterministic)."""
    return {hashlib.sha256(split.document(i).tobytes()).digest() for i in range(split.num_documents)}


def sentences(n: int, tag: str) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    return [f"{tag} {i}: " + " ".join(words[(i * k) % 8] for k in range(1, 30)) + "." for i in range(n)]


# --- the tiny profile on the builtin source (the session's dataset) ---------------------------


def test_tiny_builtin_dataset_is_complete_and_consistent(tiny_data):
    m = load_manifest(tiny_data)
    tiny = get_profile("tiny")
    assert (m.profile, m.source, m.vocab_size) == ("tiny", "builtin", tiny.vocab_size)
    tok = Tokenizer.load(tiny_data)
    assert tok.hash == m.tokenizer_hash and tok.bos_id == m.bos_id
    assert m.fingerprint == fingerprint(m.tokenizer_hash, m.splits, "tiny")
    assert m.tokens("val") >= tiny.eval_tokens + tiny.seq_len
    assert m.tokens("val") <= tiny.max_val_tokens and m.tokens("train") <= tiny.max_train_tokens
    for name in ("train", "val"):
        split = open_split(tiny_data, name)
        starts = split.offsets[:-1]
        assert (split.tokens[starts] == tok.bos_id).all()  # every document begins with BOS
        assert (np.diff(split.offsets) > 1).all()
        assert int((split.tokens == tok.bos_id).sum()) == split.num_documents  # and only there
        assert (
            hashlib.sha256(open(tiny_data / f"{name}.bin", "rb").read()).hexdigest()
            == m.splits[name]["sha256"]
        )
    val = open_split(tiny_data, "val")
    text = "".join(tok.decode(val.document(i)[1:]) for i in range(10))
    assert "import" in text and "def " in text  # it is Python's standard library


def test_no_validation_document_is_in_training(tiny_data):
    assert not doc_keys(open_split(tiny_data, "val")) & doc_keys(open_split(tiny_data, "train"))


def test_the_validation_split_is_the_held_out_modules_and_the_manifest_says_so(tiny_data):
    m = load_manifest(tiny_data)
    assert m.source_info["split"] == BUILTIN_SPLIT
    tok = Tokenizer.load(tiny_data)
    val = open_split(tiny_data, "val")
    texts = itertools.islice(BuiltinSource(m.source_info["stdlib"]).documents("val"), val.num_documents)
    expected = [tok.encode(t) for t in texts]
    got = [val.document(i)[1:].tolist() for i in range(val.num_documents)]
    assert got[:-1] == expected[:-1] and got[-1] == expected[-1][: len(got[-1])]  # the cap cuts the last


def old_rule_copy(tiny_data, where):
    """A copy of the tiny dataset whose manifest says it was split by the old rule (no `split`)."""
    shutil.copytree(tiny_data, where)
    raw = json.loads((where / "manifest.json").read_text())
    del raw["source_info"]["split"]
    (where / "manifest.json").write_text(json.dumps(raw))
    return where


def test_data_split_by_the_old_rule_is_refused_with_the_fix(tiny_data, tmp_path):
    old = old_rule_copy(tiny_data, tmp_path / "old")
    for read in (load_manifest, check_dataset, lambda d: open_split(d, "train")):
        with pytest.raises(PrepareError, match="older rule for the builtin source") as err:
            read(old)
        assert "\n" not in str(err.value)
        assert "run `evolve prepare --profile tiny --source builtin` again" in str(err.value)


def test_prepare_rebuilds_data_split_by_the_old_rule(tiny_data, evolve_home, monkeypatch):
    data = dataset_dir(get_profile("tiny"), "builtin")
    old_rule_copy(tiny_data, data)
    assert find_prepared("tiny", "builtin") is None  # not up to date: prepare starts over
    built = []
    monkeypatch.setattr("prepare.pipeline._build", lambda *a, **k: built.append(a[0]) or "rebuilt")
    assert prepare_dataset("tiny", "builtin") == "rebuilt" and built == [data]


def test_a_second_call_is_a_quick_no_op(tiny_data, monkeypatch):
    monkeypatch.setenv("EVOLVE_HOME", str(tiny_data.parent.parent))
    before = dataset_hash(tiny_data)
    start = time.monotonic()
    calls = []
    m = prepare_dataset(get_profile("tiny"), source="builtin", progress=lambda *a: calls.append(a))
    assert time.monotonic() - start < 2.0
    assert calls == [] and m.path == tiny_data
    assert dataset_hash(tiny_data) == before
    assert find_prepared("tiny", "builtin") == m


# --- resume after a real kill ------------------------------------------------------------------

KILL_MID_TRAIN = """
import os, signal
from prepare.pipeline import prepare_dataset
def progress(stage, done, total):
    if stage == "tokenize train" and done > 0:
        os.kill(os.getpid(), signal.SIGKILL)  # die in the middle of writing the training shard
prepare_dataset("tiny", "builtin", progress=progress)
"""


def test_a_killed_run_leaves_nothing_readable_and_the_next_run_resumes(tiny_data, evolve_home):
    proc = subprocess.run([sys.executable, "-c", KILL_MID_TRAIN], env=dict(os.environ), timeout=120)
    assert proc.returncode == -9
    data = dataset_dir(get_profile("tiny"), "builtin")
    names = sorted(p.name for p in data.iterdir())
    assert "manifest.json" not in names and "train.bin" not in names and "train.bin.tmp" in names
    with pytest.raises(PrepareError, match="no prepared data"):
        open_split(data, "val")
    stages = []
    m = prepare_dataset("tiny", "builtin", progress=lambda stage, *a: stages.append(stage))
    assert "tokenizer" not in stages and "tokenize val" not in stages  # finished work was kept
    assert "tokenize train" in stages
    assert not (data / "train.bin.tmp").exists()
    assert m.fingerprint == load_manifest(tiny_data).fingerprint  # same bytes as an uninterrupted run


# --- local sources --------------------------------------------------------------------------------


def test_local_source_of_every_file_type(tmp_path):
    root = tmp_path / "corpus"
    (root / "nested").mkdir(parents=True)
    docs = sentences(120, "doc")
    for i, t in enumerate(docs[:30]):
        (root / f"{i}.txt").write_text(t)
    for i, t in enumerate(docs[30:60]):
        (root / "nested" / f"{i}.md").write_text(t)
    (root / "lines.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs[60:90]))
    pq.write_table(pa.table({"text": docs[90:]}), root / "nested" / "rows.parquet")
    m = prepare_dataset(SMALL, source=f"local:{root}")
    assert m.source == f"local:{root}" and m.path == dataset_dir(SMALL, m.source)
    assert m.documents("train") + m.documents("val") == 120
    tok = Tokenizer.load(m.path)
    got = [
        tok.decode(open_split(m.path, s).document(i)[1:])
        for s in ("train", "val")
        for i in range(m.documents(s))
    ]
    assert sorted(got) == sorted(docs)  # every document round-trips, in exactly one split


def test_changed_source_files_rebuild_the_dataset(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, t in enumerate(sentences(80, "v1")):
        (root / f"{i}.txt").write_text(t)
    first = prepare_dataset(SMALL, source=f"local:{root}")
    (root / "extra.txt").write_text("a brand new document " * 20)
    second = prepare_dataset(SMALL, source=f"local:{root}")
    assert second.fingerprint != first.fingerprint
    assert second.documents("train") + second.documents("val") == 81


def test_too_little_validation_text_says_so(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    for i, t in enumerate(sentences(40, "s")):
        (root / f"{i}.txt").write_text(t)
    greedy = replace(SMALL, eval_tokens=100_000)
    with pytest.raises(PrepareError, match="val split .* needs at least 100016") as err:
        prepare_dataset(greedy, source=f"local:{root}")
    assert "\n" not in str(err.value)
    data = dataset_dir(greedy, f"local:{root}")
    assert not (data / "manifest.json").exists() and not (data / "val.bin").exists()


def test_corrupt_parquet_in_a_local_source_stops_prepare(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    pq.write_table(pa.table({"text": sentences(50, "p")}), root / "a.parquet")
    (root / "b.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    with pytest.raises(PrepareError, match="b.parquet is not a readable parquet file"):
        prepare_dataset(SMALL, source=f"local:{root}")


def test_missing_local_source_is_a_prepare_error(tmp_path):
    with pytest.raises(PrepareError, match="does not exist"):
        prepare_dataset(SMALL, source=f"local:{tmp_path / 'nothing'}")


# --- climbmix through the pipeline, from a loopback server --------------------------------------


@pytest.fixture
def hub(tmp_path):
    """Serve a directory of real parquet shards on 127.0.0.1; the validation shard shares
    documents with the training shards, as real web data can."""
    root = tmp_path / "hub"
    root.mkdir()
    val = sentences(60, "val")
    pq.write_table(pa.table({"text": val}), root / shard_name(CLIMBMIX_VAL_SHARD))
    pq.write_table(pa.table({"text": sentences(150, "train") + val[:10]}), root / shard_name(0))
    pq.write_table(pa.table({"text": val[10:15] + sentences(150, "more")}), root / shard_name(1))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_climbmix_pipeline_drops_training_copies_of_validation_documents(hub, monkeypatch, evolve_home):
    monkeypatch.setenv("EVOLVE_HF_BASE_URL", hub)
    m = prepare_dataset(SMALL, source="climbmix", num_shards=2)
    assert m.source_info["train_shards"] == [shard_name(0), shard_name(1)]
    assert sorted(p.name for p in (evolve_home / "raw" / "climbmix").iterdir()) == [
        shard_name(0),
        shard_name(1),
        shard_name(CLIMBMIX_VAL_SHARD),
    ]
    assert m.documents("val") == 60
    assert m.documents("train") == 300  # the 15 copies of validation documents are gone
    assert not doc_keys(open_split(m.path, "val")) & doc_keys(open_split(m.path, "train"))
    assert prepare_dataset(SMALL, source="climbmix", num_shards=2) == m


# --- integrity ------------------------------------------------------------------------------------


def test_package_hash_covers_prepares_source(tmp_path):
    import prepare

    pkg = os.path.dirname(prepare.__file__)
    assert package_hash() == package_hash(pkg)
    copy = tmp_path / "prepare"
    copy.mkdir()
    for name in os.listdir(pkg):
        if name.endswith(".py"):
            (copy / name).write_bytes(open(os.path.join(pkg, name), "rb").read())
    assert package_hash(copy) == package_hash()
    with open(copy / "metric.py", "a") as f:
        f.write("\n# a train.py that edits the metric\n")
    assert package_hash(copy) != package_hash()


def test_dataset_hash_changes_when_a_shard_is_rewritten(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, t in enumerate(sentences(80, "h")):
        (root / f"{i}.txt").write_text(t)
    m = prepare_dataset(SMALL, source=f"local:{root}")
    before = dataset_hash(m.path)
    assert dataset_hash(m.path) == before
    data = (m.path / "val.bin").read_bytes()
    time.sleep(0.01)
    (m.path / "val.bin").write_bytes(data)  # same bytes, rewritten
    assert dataset_hash(m.path) != before
