"""Tripwires inside the training process: file access outside what a training run needs is refused.

The trainer hands `install` a policy (see `trainer.runner`): path roots, each `write` (the worktree,
a private temp dir, compile caches), `read` (prepare, the data, the log dir) or `hidden` (the
workspace's git directory and store, other worktrees); the most specific root decides, and a path
under no root may be read but not written. The validation files may be opened only by
`prepare.metric`. A Python audit hook (PEP 578) sees every `open`, rename, delete, chmod, link,
mkdir, rmtree and directory listing made by Python code in this process, and raises
PermissionError for a refused one, after printing an `EVOLVE-SANDBOX: denied ...` line that the
trainer reads as tampering.

This is a tripwire, not a wall (docs/SECURITY.md): code in a C extension, ctypes or a subprocess
is not audited, and an audit hook cannot see what it is never told. It stops the accidental and
the naive, and makes anything else deliberate.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass

WRITE, READ, HIDDEN = "write", "read", "hidden"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MARKER = "EVOLVE-SANDBOX: denied"
SELF_KILL_MARKER = "EVOLVE-SANDBOX: train.py sent SIGKILL to its own process"
_METRIC_FILE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "metric.py")

# event -> (positions of paths written, positions of paths read); dir_fd follows when present
_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), ()),
    "os.rmdir": ((0,), ()),
    "os.rename": ((0, 1), ()),
    "os.truncate": ((0,), ()),
    "os.chmod": ((0,), ()),
    "os.chown": ((0,), ()),
    "os.chflags": ((0,), ()),
    "os.utime": ((0,), ()),
    "os.mkdir": ((0,), ()),
    "os.symlink": ((1,), ()),
    "os.link": ((1,), (0,)),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
    "shutil.rmtree": ((0,), ()),
    "shutil.move": ((0, 1), ()),
    "shutil.copyfile": ((1,), (0,)),
    "os.listdir": ((), (0,)),
    "os.scandir": ((), (0,)),
}
_DIR_FD_INDEX = {"os.remove": 1, "os.rmdir": 1, "os.chmod": 2, "os.utime": 3, "os.mkdir": 2}


@dataclass(frozen=True)
class Policy:
    """Path roots and what train.py may do under each; `metric_only` files only prepare.metric reads."""

    roots: tuple[tuple[str, str], ...]  # (absolute real path, WRITE | READ | HIDDEN)
    metric_only: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> Policy:
        return cls(
            roots=tuple((str(p), str(k)) for p, k in data.get("roots", ())),
            metric_only=tuple(str(p) for p in data.get("metric_only", ())),
        )

    def to_json(self) -> dict:
        return {"roots": [list(r) for r in self.roots], "metric_only": list(self.metric_only)}

    def kind(self, path: str) -> str | None:
        """The kind of the most specific root holding `path` (a real absolute path), or None."""
        best, best_len = None, -1
        for root, kind in self.roots:
            if (path == root or path.startswith(root.rstrip("/") + "/")) and len(root) > best_len:
                best, best_len = kind, len(root)
        return best


def _is_proc_mem(path: str) -> bool:
    # another process's memory (or our own): where the signing key lives
    parts = path.split("/")
    return len(parts) == 4 and parts[1] == "proc" and parts[3] in ("mem", "pagemap")


class _Hook:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.metric_only = frozenset(policy.metric_only)
        self.denied: list[str] = []
        self.local = threading.local()

    def resolve(self, path, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            path = os.fsdecode(os.fspath(path))
        except TypeError:
            return None
        if not os.path.isabs(path):
            base = os.getcwd()
            if dir_fd is not None and dir_fd >= 0:
                try:
                    base = os.readlink(f"/proc/self/fd/{dir_fd}")
                except OSError:
                    pass
            path = os.path.join(base, path)
        return os.path.realpath(path)

    def metric_is_reading(self) -> bool:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename == _METRIC_FILE:
                return True
            frame = frame.f_back
        return False

    def check(self, action: str, path: str | None) -> None:
        if path is None:
            return
        kind = self.policy.kind(path)
        if _is_proc_mem(path):
            why = "another process's memory is off limits"
        elif kind == HIDDEN:
            why = "it is the harness's (git, the store, other worktrees, logs), not this run's"
        elif action == "write" and kind != WRITE:
            why = "train.py may write only in its worktree, its temp dir and the compile caches"
        elif action == "read" and path in self.metric_only and not self.metric_is_reading():
            why = "the validation data is read by prepare.evaluate_bpb only"
        else:
            return
        self.deny(action, path, why)

    def deny(self, action: str, path: str, why: str) -> None:
        message = f"{action} {path}: {why}"
        self.denied.append(message)
        try:
            os.write(2, f"\n{MARKER} {message}\n".encode(errors="replace"))
        except OSError:
            pass
        raise PermissionError(f"sandbox: train.py may not {message}")

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open" or event in _EVENTS or event in ("os.kill", "os.killpg"):
            if getattr(self.local, "busy", False):
                return  # our own work (realpath, readlink) is not audited twice
            self.local.busy = True
            try:
                self.handle(event, args)
            finally:
                self.local.busy = False

    def handle(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = bool((flags or 0) & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
            self.check("write" if writes else "read", self.resolve(path))
        elif event in ("os.kill", "os.killpg"):
            target, sig = args
            me = os.getpid() if event == "os.kill" else os.getpgid(0)
            if sig == signal.SIGKILL and target in (me, 0):
                os.write(2, f"\n{SELF_KILL_MARKER}\n".encode())
        else:
            written, read = _EVENTS[event]
            dir_fd = args[_DIR_FD_INDEX[event]] if event in _DIR_FD_INDEX else None
            for i in written:
                if i < len(args):
                    self.check("write", self.resolve(args[i], dir_fd))
            for i in read:
                if i < len(args):
                    self.check("read", self.resolve(args[i], dir_fd))


_ACTIVE: _Hook | None = None


def install(policy: Policy) -> None:
    """Audit every file access of this process from now on (audit hooks cannot be removed)."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    _ACTIVE = _Hook(policy)
    sys.addaudithook(_ACTIVE)


def denied() -> list[str]:
    """What was refused so far in this process (each also printed with MARKER)."""
    return list(_ACTIVE.denied) if _ACTIVE is not None else []


def roots(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Normalize (path, kind) pairs to real absolute paths, dropping duplicates."""
    seen: dict[str, str] = {}
    for path, kind in pairs:
        if kind not in (WRITE, READ, HIDDEN):
            raise ValueError(f"unknown sandbox kind {kind!r}")
        seen[os.path.realpath(os.path.abspath(path))] = kind
    return tuple(seen.items())
