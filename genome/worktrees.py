"""A pool of git worktrees, one per device, reused across evaluations.

Slot `i` lives at `.evolve/worktrees/<i>` (ignored by the workspace's git). `checkout(slot, commit)`
puts that commit there, detached and forced, then removes every untracked and ignored file
(`git clean -fdx`), so a run never sees what the previous one left behind, and nothing of it
survives. Worktrees broken by a crash (a deleted or corrupted directory, a stale lock, a missing
admin entry) are repaired when the pool starts and, failing a checkout, once more on the spot.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from .errors import GenomeError
from .record import Genome
from .repo import GenomeRepo, git_process, run_git

POOL_DIR = Path(".evolve") / "worktrees"


class WorktreePool:
    def __init__(self, repo: GenomeRepo | Path | str, n: int, start: str = "HEAD"):
        if n < 1:
            raise GenomeError(f"a worktree pool needs at least one slot, not {n}")
        self.root = repo.root if isinstance(repo, GenomeRepo) else Path(repo).resolve()
        self.base = self.root / POOL_DIR
        self.n = n
        self._start = start
        self._locks = [threading.Lock() for _ in range(n)]
        self.base.mkdir(parents=True, exist_ok=True)
        run_git(self.root, "worktree", "prune")
        for slot in range(n):
            if not self._healthy(slot):
                self._rebuild(slot)

    def path(self, slot: int) -> Path:
        if not 0 <= slot < self.n:
            raise GenomeError(f"worktree slot {slot} is outside the pool (0..{self.n - 1})")
        return self.base / str(slot)

    def _registered(self) -> set[Path]:
        out = run_git(self.root, "worktree", "list", "--porcelain")
        return {
            Path(line[len("worktree ") :]).resolve()
            for line in out.splitlines()
            if line.startswith("worktree ")
        }

    def _git_dir(self, slot: int) -> Path | None:
        proc = git_process(self.path(slot), "rev-parse", "--absolute-git-dir")
        return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None

    def _healthy(self, slot: int) -> bool:
        path = self.path(slot)
        if not (path / ".git").is_file() or path.resolve() not in self._registered():
            return False
        top = git_process(path, "rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.decode().strip()).resolve() != path.resolve():
            return False
        git_dir = self._git_dir(slot)
        for lock in ("index.lock", "HEAD.lock"):  # left by a git killed mid-operation
            if git_dir is not None:
                (git_dir / lock).unlink(missing_ok=True)
        return True

    def _rebuild(self, slot: int) -> None:
        path = self.path(slot)
        if path.resolve() in self._registered():
            git_process(self.root, "worktree", "remove", "--force", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
        run_git(self.root, "worktree", "prune")
        run_git(self.root, "worktree", "add", "--detach", "--force", "--quiet", str(path), self._start)

    def _switch(self, path: Path, commit: str) -> None:
        run_git(path, "checkout", "--detach", "--force", "--quiet", commit)
        run_git(path, "clean", "-fdxq")

    def checkout(self, slot: int, commit: Genome | str) -> Path:
        """Put `commit` in slot `slot`, exactly: nothing untracked, ignored or modified remains."""
        sha = commit.commit if isinstance(commit, Genome) else commit
        path = self.path(slot)
        with self._locks[slot]:
            try:
                self._switch(path, sha)
            except GenomeError:
                self._rebuild(slot)  # broken since start (a crash, a hand-deleted folder): once more
                self._switch(path, sha)
        return path

    def head(self, slot: int) -> str:
        return run_git(self.path(slot), "rev-parse", "HEAD")

    def close(self) -> None:
        """Remove every worktree of the pool (their folders and git's records of them)."""
        for slot in range(self.n):
            path = self.path(slot)
            git_process(self.root, "worktree", "remove", "--force", "--force", str(path))
            shutil.rmtree(path, ignore_errors=True)
        run_git(self.root, "worktree", "prune")
