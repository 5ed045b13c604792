"""Nothing a run leaves behind reaches a later run: compile caches are per genome and cut before the data,
and no process outlives its run."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

import trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))  # the trainer tests' helpers
from trainer_support import beating  # noqa: E402

# A bigram that would hand its trained weights to the next run of its genome through the compile
# cache: it writes a marker before it sees any data, and its weights after training; at start it
# says what it finds there (and loads the weights if they are).
CARRIER = """
import os
from pathlib import Path
import torch
import prepare

cfg = prepare.run_config()
cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
early, ckpt = cache / "early.txt", cache / "ckpt.pt"
print(f"FOUND early={early.exists()} ckpt={ckpt.exists()}", flush=True)
torch.manual_seed(cfg.seed)
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
if ckpt.exists():
    model.load_state_dict(torch.load(ckpt))
early.write_text("written before the first batch")
opt = torch.optim.Adam(model.parameters(), lr=0.05)
for x, y in prepare.train_loader(model, batch_size=8):
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save(model.state_dict(), ckpt)  # trained weights, for the next run
"""

# Leaves a process in a session of its own that goes on writing into a folder it was given, meant
# to outlive the run (and, say, train on and hand its weights to the next).
DAEMON = """
import os, subprocess, sys
import torch
import prepare

cfg = prepare.run_config()
later = (
    "import os, time, pathlib\\n"
    "while True:\\n"
    "    pathlib.Path(os.environ['OUT'], 'beat').touch()\\n"
    "    time.sleep(0.05)\\n"
)
subprocess.Popen(["setsid", sys.executable, "-c", later], start_new_session=True)
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass
"""


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "compile-cache"
    monkeypatch.setenv("EVOLVE_COMPILE_CACHE", str(root))
    return root


def _run(tmp_path, tiny_data, source: str, seed: int, name: str, **kw) -> trainer.RunResult:
    tree = tmp_path / f"tree-{name}"
    if not tree.exists():
        tree.mkdir()
        (tree / "train.py").write_text(source)
    logs = tmp_path / f"logs-{name}-{seed}-{len(list(tmp_path.glob('logs-*')))}"
    return trainer.run(
        tree, depth=2, budget=8192, seed=seed, profile="tiny", data_dir=tiny_data, log_dir=logs, **kw
    )


def test_a_checkpoint_left_in_the_cache_never_reaches_the_next_run(tmp_path, tiny_data, cache_root):
    first = _run(tmp_path, tiny_data, CARRIER, 1, "carrier")
    second = _run(tmp_path, tiny_data, CARRIER, 1, "carrier")  # the same genome again, same seed

    assert first.ok and second.ok, (first.reason, second.reason)
    assert "FOUND early=False ckpt=False" in Path(first.log_path).read_text()
    # what it wrote before the first batch is kept for its genome; what it wrote after is not
    assert "FOUND early=True ckpt=False" in Path(second.log_path).read_text()
    assert second.val_bpb == first.val_bpb  # it started from scratch, as the first did
    (genome_cache,) = [p for p in cache_root.iterdir() if not p.name.startswith(".")]
    assert (genome_cache / "inductor" / "early.txt").exists()
    assert not list(genome_cache.rglob("ckpt.pt"))


def test_another_genome_never_sees_its_cache(tmp_path, tiny_data, cache_root):
    _run(tmp_path, tiny_data, CARRIER, 1, "carrier")
    other = _run(tmp_path, tiny_data, CARRIER + "# a different genome\n", 1, "other")

    assert other.ok, other.reason
    assert "FOUND early=False ckpt=False" in Path(other.log_path).read_text()
    assert len([p for p in cache_root.iterdir() if not p.name.startswith(".")]) == 2


def test_a_process_left_behind_dies_with_its_run(tmp_path, tiny_data, cache_root):
    out = tmp_path / "out"
    out.mkdir()

    result = _run(tmp_path, tiny_data, DAEMON, 1, "daemon", writable=[out], extra_env={"OUT": str(out)})

    assert result.ok, result.reason
    assert (out / "beat").exists()  # it ran ...
    assert beating(out) == []  # ... and did not outlive the run


def test_the_cache_store_is_trimmed_to_its_cap(tmp_path, tiny_data, cache_root, monkeypatch):
    from trainer.compile_cache import CompileCache

    cache = CompileCache(cache_root, limit_bytes=10)
    for key in ("a", "b", "c"):
        staging = tmp_path / f"staging-{key}"
        staging.mkdir()
        (staging / "kernel.bin").write_bytes(b"x" * 8)
        cache.keep(key, staging)
        time.sleep(0.01)
    assert sorted(p.name for p in cache_root.iterdir()) == ["c"]  # the newest one stays
    shutil.rmtree(cache_root)
