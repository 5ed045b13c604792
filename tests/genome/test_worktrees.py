"""The worktree pool: exact, clean checkouts per slot, and repair of worktrees broken by a crash."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from genome_support import git

from genome import GenomeError, WorktreePool, commit_hyperparams


def clean_at(path, commit) -> bool:
    return git(path, "rev-parse", "HEAD") == commit and git(path, "status", "--porcelain", "--ignored") == ""


def test_checkout_is_exact_and_leaves_nothing_behind(repo, workspace):
    base = repo.baseline()
    child = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    pool = WorktreePool(repo, 2)
    path = pool.checkout(0, child)
    assert path == workspace.root / ".evolve" / "worktrees" / "0"
    assert "LEARNING_RATE = 4e-3" in (path / "train.py").read_text()
    # A run leaves debris: outputs, caches, an edited tracked file, an ignored folder.
    (path / "out.log").write_text("log\n")
    (path / "__pycache__").mkdir()
    (path / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (path / ".evolve").mkdir()
    (path / "train.py").write_text("tampered\n")
    assert pool.checkout(0, base) == path
    assert clean_at(path, base.commit)
    assert (path / "train.py").read_text() == repo.read(base)
    assert git(workspace.root, "status", "--porcelain") == ""  # the user's checkout sees none of it


def test_slots_switch_independently_and_concurrently(repo):
    base = repo.baseline()
    kids = [commit_hyperparams(repo, base, {"BATCH_SIZE": 8 + k}) for k in range(1, 5)]
    pool = WorktreePool(repo, 4)
    errors = []

    def worker(slot):
        try:
            for rounds in range(3):
                kid = kids[(slot + rounds) % 4]
                path = pool.checkout(slot, kid)
                assert f"BATCH_SIZE = {kid.description.split()[-1]}" in (path / "train.py").read_text()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for slot in range(4):
        assert clean_at(pool.path(slot), kids[(slot + 2) % 4].commit)


def test_stale_worktrees_are_repaired_on_start(repo, workspace):
    base = repo.baseline()
    pool = WorktreePool(repo, 3)
    for slot in range(3):
        pool.checkout(slot, base)
    # Crash damage: a folder deleted by hand, a corrupted .git file, a stale lock from a killed git.
    shutil.rmtree(pool.path(0))
    (pool.path(1) / ".git").write_text("gitdir: /nowhere\n")
    git_dir = git(pool.path(2), "rev-parse", "--absolute-git-dir")
    (workspace.root / git_dir / "index.lock").write_text("")
    (pool.path(2) / "junk.txt").write_text("left over\n")
    again = WorktreePool(repo, 3)
    child = commit_hyperparams(repo, base, {"DROPOUT": 0.2})
    for slot in range(3):
        assert clean_at(again.checkout(slot, child), child.commit)
    registered = git(workspace.root, "worktree", "list", "--porcelain").count("worktree ")
    assert registered == 4  # the main checkout and three slots, no leftovers


def test_a_slot_broken_while_running_is_rebuilt_on_the_next_checkout(repo):
    base = repo.baseline()
    pool = WorktreePool(repo, 1)
    pool.checkout(0, base)
    shutil.rmtree(pool.path(0))
    assert clean_at(pool.checkout(0, base), base.commit)


def test_close_removes_every_worktree_and_slots_are_bounded(repo, workspace):
    pool = WorktreePool(repo, 2)
    with pytest.raises(GenomeError, match="outside the pool"):
        pool.path(2)
    pool.close()
    assert not pool.path(0).exists() and not pool.path(1).exists()
    assert git(workspace.root, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_switching_commits_is_fast(repo):
    base = repo.baseline()
    child = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    pool = WorktreePool(repo, 1)
    start = time.perf_counter()
    for k in range(10):
        pool.checkout(0, child if k % 2 else base)
    # Two small git commands per switch; generous for a loaded CI machine, far below a fresh clone.
    assert time.perf_counter() - start < 10.0
    assert clean_at(pool.path(0), child.commit)
