"""A tripwire inside the training process: writes outside the run's own folders are refused.

The wall is the operating system: the trainer runs `train.py` in its own namespaces, where the
store, the validation data, the other worktrees and the home folder are simply not there, and
where prepare, the Python environment and the tokenizer are mounted read-only (trainer.isolation).
This hook only turns an attempt into a readable reason: a Python audit hook (PEP 578) sees every
`open`, directory listing, rename, delete, chmod, link, mkdir, `rmtree`, copy and SQLite
connection that Python code makes. A write outside the folders the trainer named
(`EVOLVE_WRITABLE`: the worktree, the private temp dir, the compile cache, /dev), or a read
outside them, the base system, the Python environment and `EVOLVE_READABLE` (the tokenizer's
folder), raises PermissionError after printing an `EVOLVE-SANDBOX: denied ...` line, which makes
the run `invalid`: looking for the store or another worktree is mischief even where it finds
nothing. Code that goes around the hook (C, ctypes, a subprocess) meets the mounts instead; the
hook is a first filter, nothing more.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MARKER = "EVOLVE-SANDBOX: denied"
HARNESS = "it is the harness's (the store, git, the other worktrees, the data, the logs), not the run's"
SELF_KILL_MARKER = "EVOLVE-SANDBOX: train.py sent SIGKILL to its own process"

# event -> positions of the paths it writes
_WRITES: dict[str, tuple[int, ...]] = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.rename": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.utime": (0,),
    "os.mkdir": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
    "shutil.move": (0, 1),
    "shutil.copyfile": (1,),
    "sqlite3.connect": (0,),
}
_DIR_FD_INDEX = {"os.remove": 1, "os.rmdir": 1, "os.chmod": 2, "os.utime": 3, "os.mkdir": 2}
_AUDITED = frozenset({"open", "os.listdir", "os.scandir", "os.chdir", "os.kill", "os.killpg", *_WRITES})


# Where a training process reads besides its own folders and its Python: the base system.
SYSTEM_ROOTS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/tmp",
)


def _under(path: str, roots) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


@dataclass(frozen=True)
class Policy:
    """The folders (absolute paths) under which train.py may write, and those it may read besides
    (the base system and its Python are added at install). `secret` files are never read."""

    writable: tuple[str, ...]
    readable: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()  # the harness's folders: neither read nor written, wherever they are

    def allows(self, path: str) -> bool:
        """A write is allowed where the most specific root holding the path is a writable one
        (prepare under the run's /tmp, say, stays read-only)."""
        if _under(path, self.hidden):
            return False
        best = lambda roots: max((len(r) for r in roots if _under(path, (r,))), default=-1)  # noqa: E731
        return best(self.writable) >= 0 and best(self.writable) >= best(self.readable)

    def may_read(self, path: str) -> bool:
        if path in self.secret or _under(path, self.hidden):
            return False
        return path == "/" or _under(path, self.readable) or _under(path, self.writable)


def _python_roots() -> list[str]:
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(__file__)]
    roots += [p for p in sys.path if p and os.path.isabs(p)]
    return [os.path.realpath(p) for p in roots]


class _Hook:
    def __init__(self, policy: Policy):
        real = lambda paths: tuple(os.path.realpath(p) for p in paths)  # noqa: E731
        readable = (*real(policy.readable), *SYSTEM_ROOTS, *_python_roots())
        self.policy = Policy(real(policy.writable), readable, real(policy.secret), real(policy.hidden))
        self.denied: list[str] = []
        self.local = threading.local()

    def resolve(self, path, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            path = os.fsdecode(os.fspath(path))
        except TypeError:
            return None
        if path in (":memory:", ""):
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

    def check(self, path: str | None) -> None:
        if path is None or self.policy.allows(path):
            return
        if _under(path, self.policy.hidden):
            self.deny(f"write {path}: {HARNESS}")
        self.deny(
            f"write {path}: train.py may write only in its worktree, its temp dir and the compile cache"
        )

    def check_read(self, path: str | None) -> None:
        if path is None or self.policy.may_read(path):
            return
        if _under(path, self.policy.hidden):
            self.deny(f"read {path}: {HARNESS}")
        self.deny(
            f"read {path}: it is not the run's (the run sees its worktree, its Python and the tokenizer)"
        )

    def deny(self, message: str) -> None:
        self.denied.append(message)
        try:
            os.write(2, f"\n{MARKER} {message}\n".encode(errors="replace"))
        except OSError:
            pass
        raise PermissionError(f"sandbox: train.py may not {message}")

    def __call__(self, event: str, args: tuple) -> None:
        if event in _AUDITED:
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
            (self.check if writes else self.check_read)(self.resolve(path))
        elif event in ("os.listdir", "os.scandir"):
            # absolute paths only: the import system lists sys.path entries, some of which are
            # markers, not folders (an editable install's path hook); a relative path is under
            # the working directory, which os.chdir checked
            target = args[0] if args and args[0] is not None else "."
            if isinstance(target, (str, bytes)) and os.path.isabs(os.fsdecode(target)):
                self.check_read(self.resolve(target))
        elif event == "os.chdir":
            self.check_read(self.resolve(args[0]))
        elif event in ("os.kill", "os.killpg"):
            target, sig = args
            me = os.getpid() if event == "os.kill" else os.getpgid(0)
            if sig == signal.SIGKILL and target in (me, 0):
                os.write(2, f"\n{SELF_KILL_MARKER}\n".encode())
        else:
            dir_fd = args[_DIR_FD_INDEX[event]] if event in _DIR_FD_INDEX else None
            for i in _WRITES[event]:
                if i < len(args):
                    self.check(self.resolve(args[i], dir_fd))


_ACTIVE: _Hook | None = None


def install(policy: Policy) -> None:
    """Audit every write of this process from now on (audit hooks cannot be removed)."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    _ACTIVE = _Hook(policy)
    sys.addaudithook(_ACTIVE)


def denied() -> list[str]:
    """What was refused so far in this process (each also printed with MARKER)."""
    return list(_ACTIVE.denied) if _ACTIVE is not None else []
