"""Isolation by the operating system: every training run and every evaluation in its own namespaces.

`train.py` runs under bubblewrap (`bwrap`) with new user, mount, pid, network, IPC and UTS
namespaces. Its file system is built from nothing: the system's `/usr` (and `/lib*`, `/bin`), a
few files of `/etc`, the Python environment and the prepare package, read-only; the run's private
worktree copy, temp dir and compile cache, writable; the tokenizer, read-only; the devices the run
was given. Everything else (the validation split, the training shards, the store, `.evolve/`,
the other worktrees, the home folder, the network) is not there. The `builtin` source's validation
text is the standard library's held-out modules (prepare.sources): in every standard-library folder
that a mount holds, they are covered (an empty read-only tmpfs over a package, /dev/null over a
module and its compiled files), at every place that folder appears. When the run's first process
ends, or the controller dies (`--die-with-parent`), the kernel ends every process of the
namespace, detached or not.

`EVOLVE_ISOLATION=none` runs without namespaces (for hosts that forbid them, some container
platforms). It is loud: the trainer warns on every run, the result records `isolation: none`,
and `evolve status` shows it. The harness clock and the separate evaluator still hold; what the
namespaces hide does not.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from prepare.sources import BUILTIN_VAL_PACKAGES, held_out_paths, is_stdlib_folder

from .errors import TrainerError

ISOLATION_VAR = "EVOLVE_ISOLATION"
MODES = ("bwrap", "none")
# /etc entries a Python and CUDA process reads; the rest of /etc (keys, shadow, ...) stays out.
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "hosts",
    "localtime", "alternatives", "os-release", "mime.types",
)  # fmt: skip
GPU_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps", "dri")
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`), "
    "or, where the host forbids namespaces, set EVOLVE_ISOLATION=none to run train.py without "
    "isolation (it can then read the validation data and your files; docs/SECURITY.md)"
)


def mode() -> str:
    """The isolation asked for: "bwrap" (the default) or "none"."""
    value = (os.environ.get(ISOLATION_VAR) or "bwrap").strip().lower()
    if value not in MODES:
        raise TrainerError(f"{ISOLATION_VAR}={value!r}: use one of {', '.join(MODES)}")
    return value


@functools.cache
def bwrap_version() -> str:
    """bubblewrap's version after a trial sandbox worked; TrainerError (with the fix) otherwise."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise TrainerError(
            f"bubblewrap (bwrap) is not installed, and train.py only runs isolated: {INSTALL_HINT}"
        )
    try:
        version = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        trial = subprocess.run(
            [exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise TrainerError(f"bubblewrap could not be run ({exc}): {INSTALL_HINT}") from None
    if trial.returncode != 0:
        why = (trial.stderr or trial.stdout).strip().splitlines()
        raise TrainerError(
            f"bubblewrap cannot make namespaces on this host ({why[-1] if why else trial.returncode}): {INSTALL_HINT}"
        )
    return version or "bwrap"


# Pseudo file systems: never walked for standard-library folders.
NOT_WALKED = ("/proc", "/sys", "/dev")
# How long a walk for standard-library folders is trusted (a Python installed meanwhile is found then).
STDLIB_WALK_SECONDS = 600.0
_stdlib_walks: dict[str, tuple[float, tuple[str, ...]]] = {}


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def stdlib_folders(root: str) -> tuple[str, ...]:
    """The Python standard-library folders (prepare.sources.is_stdlib_folder) under the real path
    `root`, itself included: every Python installation a mount of `root` shows, whichever Python
    runs train.py. Walked once per STDLIB_WALK_SECONDS; a folder below one walked is read from it."""
    now = time.monotonic()
    for top, (when, found) in list(_stdlib_walks.items()):
        if now - when >= STDLIB_WALK_SECONDS:
            _stdlib_walks.pop(top, None)
        elif _within(root, top):
            return tuple(f for f in found if _within(f, root))
    found: list[str] = []
    if not any(_within(root, p) for p in NOT_WALKED):
        for dirpath, dirnames, filenames in os.walk(root):
            if is_stdlib_folder(dirpath, {*dirnames, *filenames}):
                found.append(dirpath)
                dirnames[:] = [d for d in dirnames if d not in BUILTIN_VAL_PACKAGES]
            dirnames[:] = [
                d
                for d in dirnames
                if d not in ("__pycache__", ".git") and os.path.join(dirpath, d) not in NOT_WALKED
            ]
    _stdlib_walks[root] = (now, tuple(found))
    return tuple(found)


class Sandbox:
    """A bwrap command line under construction: mounts, devices, then the command."""

    def __init__(self) -> None:
        self.args: list[str] = [
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/evolve",
        ]  # fmt: skip
        self._mounts: list[tuple[str, str, str]] = []  # (flag, source, destination), in order
        self._seen: set[str] = set()

    def ro(self, src: str | Path, dst: str | Path | None = None) -> Sandbox:
        return self._bind("--ro-bind", src, dst)

    def rw(self, src: str | Path, dst: str | Path | None = None) -> Sandbox:
        return self._bind("--bind", src, dst)

    def dev(self, src: str | Path) -> Sandbox:
        return self._bind("--dev-bind", src, None)

    def _bind(self, flag: str, src, dst) -> Sandbox:
        src = str(src)
        dst = str(dst if dst is not None else src)
        if dst in self._seen or not os.path.lexists(src):
            return self
        self._seen.add(dst)
        self._mounts.append((flag, src, dst))
        return self

    def system(self) -> Sandbox:
        """The base system, read-only: /usr, /lib*, /bin, /sbin, /sys and a few files of /etc."""
        for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys"):
            self.ro(top)
        for name in ETC_FILES:
            self.ro(f"/etc/{name}")
        return self

    def python(self, paths: Iterable[str]) -> Sandbox:
        """The Python environment (prefixes, sys.path entries, the prepare package), read-only."""
        for p in sorted({os.path.realpath(p) for p in paths if p} | {p for p in paths if p}, key=len):
            covered = [s for s in self._seen if p == s or p.startswith(s.rstrip("/") + "/")]
            if p in ("/", "") or any(s != "/tmp" for s in covered):  # already there (below /tmp: bind anyway)
                continue
            if os.path.exists(p):
                self.ro(p)
        return self

    def gpus(self, indices: Sequence[str]) -> Sandbox:
        """The device nodes of these GPUs (and the driver's control nodes), nothing of the others."""
        for i in indices:
            self.dev(f"/dev/nvidia{i}")
        for name in GPU_NODES:
            self.dev(f"/dev/{name}")
        return self

    def held_out(self) -> tuple[list[str], list[str]]:
        """The mounts' arguments, and the arguments that then cover the builtin source's validation
        text (prepare.sources.held_out_paths) in every standard-library folder the mounts hold: at
        each place inside the sandbox where that folder appears (/usr/lib and /lib, a venv's base
        prefix, a sys.path entry), an empty read-only tmpfs over a package, /dev/null over a file.
        A mount whose source lies inside the held-out text is left out."""
        mounts = [(flag, src, dst, os.path.realpath(src)) for flag, src, dst in self._mounts]
        hidden: set[str] = set()
        for flag, _, _, real in mounts:
            if flag != "--dev-bind" and os.path.isdir(real):
                for folder in stdlib_folders(real):
                    hidden.update(os.path.realpath(p) for p in held_out_paths(folder))
        kept = [m for m in mounts if not any(_within(m[3], h) for h in hidden)]
        binds = [arg for flag, src, dst, _ in kept for arg in (flag, src, dst)]
        cover: list[str] = []
        done: set[str] = set()
        for h in sorted(hidden):
            folder = os.path.isdir(h)
            for i, (flag, _, dst, real) in enumerate(kept):
                if flag == "--dev-bind" or not _within(h, real):
                    continue
                target = os.path.normpath(os.path.join(dst, os.path.relpath(h, real)))
                # only where this mount is what the sandbox shows there (no later mount above it)
                if target in done or any(_within(target, later[2]) for later in kept[i + 1 :]):
                    continue
                done.add(target)
                cover += (
                    ["--tmpfs", target, "--remount-ro", target]
                    if folder
                    else ["--ro-bind", "/dev/null", target]
                )
        return binds, cover

    def command(self, cmd: Sequence[str], cwd: str) -> list[str]:
        exe = shutil.which("bwrap") or "bwrap"
        binds, cover = self.held_out()
        # the root itself (an empty tmpfs holding the mount points) is read-only too
        return [exe, *self.args, *binds, *cover, "--remount-ro", "/", "--chdir", cwd, "--", *cmd]


def python_paths(probe: dict) -> list[str]:
    """Folders a child Python needs, from `trainer.runner`'s probe of that interpreter."""
    out = list(probe.get("prefixes", [])) + list(probe.get("path", []))
    if probe.get("prepare"):
        out.append(str(Path(probe["prepare"])))
    out.append(os.path.dirname(os.path.realpath(sys.executable)))
    return [p for p in out if isinstance(p, str)]


def library_paths(env: dict[str, str]) -> list[str]:
    """LD_LIBRARY_PATH's folders (CUDA libraries outside /usr, e.g. /usr/local/nvidia/lib64)."""
    # Only absolute folders: a relative entry ("." or "lib") names the controller's working
    # directory, which is the workspace itself when `evolve run` is started there.
    return [
        p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if os.path.isabs(p) and os.path.isdir(p)
    ]
