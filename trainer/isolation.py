"""Isolation by the operating system: every training run and every evaluation in its own namespaces.

`train.py` runs under bubblewrap (`bwrap`) with new user, mount, pid, network, IPC and UTS
namespaces. Its file system is built from nothing: the system's `/usr` (and `/lib*`, `/bin`), a
few files of `/etc`, the Python environment and the prepare package, read-only; the run's private
worktree copy, temp dir and compile cache, writable; the tokenizer, read-only; the devices the run
was given. Everything else (the validation split, the training shards, the store, `.evolve/`,
the other worktrees, the home folder, the network) is not there. When the run's first process
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
from collections.abc import Iterable, Sequence
from pathlib import Path

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


class Sandbox:
    """A bwrap command line under construction: mounts, devices, then the command."""

    def __init__(self) -> None:
        self.args: list[str] = [
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/evolve",
        ]  # fmt: skip
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
        self.args += [flag, src, dst]
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

    def command(self, cmd: Sequence[str], cwd: str) -> list[str]:
        exe = shutil.which("bwrap") or "bwrap"
        # the root itself (an empty tmpfs holding the mount points) is read-only too
        return [exe, *self.args, "--remount-ro", "/", "--chdir", cwd, "--", *cmd]


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
