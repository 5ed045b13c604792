"""Compile caches that cannot carry state between runs: one per genome, snapshotted before any data.

Inductor and Triton keep compiled kernels on disk; a warm cache saves a run tens of seconds. But
whatever a run writes there, a later run reads, so a shared, writable cache is a way to hand
trained weights to the next run or a poisoned kernel to a rival. Here:

- each genome (the content of its worktree) has a cache of its own, under
  `$EVOLVE_COMPILE_CACHE` (default `$EVOLVE_HOME/compile-cache`); no other genome ever reads it,
  so a run cannot reach another genome's kernels, its parent's or its siblings';
- a run gets a private copy of that cache (a real copy: changing a file changes only the copy);
- the moment the training window opens (before the first real batch is served), the harness
  copies what the run's cache holds then; only that copy replaces the genome's cache after the
  run. Anything written once the run has seen data (a checkpoint, a tuned table) is dropped, so
  what the next run of the same genome inherits was made from random tokens and the code alone;
- the store of caches is capped (`EVOLVE_COMPILE_CACHE_GB`, default 20): the least recently used
  genomes' caches go first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

CACHE_VAR = "EVOLVE_COMPILE_CACHE"
LIMIT_VAR = "EVOLVE_COMPILE_CACHE_GB"


def tree_key(root: Path) -> str:
    """A content hash of a worktree copy: its files' relative paths and bytes (symlinks as targets)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if not p.is_dir()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _copy(src: Path, dst: Path) -> None:
    """A real copy (never hard links, which would share bytes), symlinks kept as links."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True, copy_function=shutil.copy2)


class CompileCache:
    """The per-genome caches under `root` (None: no sharing at all, every run starts cold)."""

    def __init__(self, root: Path | None, limit_bytes: int | None = None):
        self.root = Path(root) if root is not None else None
        self.limit = limit_bytes

    @classmethod
    def from_env(cls, evolve_home: Path) -> CompileCache:
        raw = os.environ.get(CACHE_VAR)
        if raw is not None and raw.strip().lower() in ("", "none", "off"):
            return cls(None)
        try:
            gb = float(os.environ.get(LIMIT_VAR) or 20)
        except ValueError:
            gb = 20.0
        return cls(Path(raw) if raw else Path(evolve_home) / "compile-cache", int(gb * 2**30))

    def fill(self, key: str, private: Path) -> bool:
        """Copy the genome's cache into the run's private folder; True when there was one."""
        private.mkdir(parents=True, exist_ok=True)
        if self.root is None:
            return False
        source = self.root / key
        if not source.is_dir():
            return False
        try:
            _copy(source, private)
            os.utime(source)  # recently used
        except OSError:
            return False
        return True

    def snapshot(self, private: Path, staging: Path) -> None:
        """What the run's cache holds now, before it sees data (called as the window opens)."""
        if self.root is None:
            return
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _copy(private, staging)

    def keep(self, key: str, staging: Path) -> None:
        """Make the snapshot the genome's cache (atomically), then trim the store to its cap."""
        if self.root is None or not staging.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / key
        incoming = self.root / f".{key}.{os.getpid()}.{time.monotonic_ns()}"
        shutil.move(str(staging), incoming)
        old = self.root / f".{key}.old.{time.monotonic_ns()}"
        try:
            if target.exists():
                target.rename(old)
            incoming.rename(target)
        finally:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(incoming, ignore_errors=True)
        self._trim(keep=target)

    def _trim(self, keep: Path) -> None:
        if self.limit is None:
            return
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        sizes = {p: _size(p) for p in entries}
        total = sum(sizes.values())
        for p in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.limit:
                return
            if p == keep:
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]
