"""Running a command as a supervised process group: wall-clock limit, capped log, nothing left behind.

The child gets its own session (and so its own process group). On the deadline the whole group
gets SIGTERM, then SIGKILL after a grace period; when the main process exits, whatever it left in
the group is killed too. torchrun starts its workers in sessions of their own, so every process is
also tagged through an environment variable and swept from /proc by that tag, and so is any
process that still holds the run's output pipe (one that started a new session with a cleared
environment). A process that leaves all three is out of reach (docs/SECURITY.md).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAG_VAR = "EVOLVE_RUN_TAG"
TAIL_BYTES = 256 * 1024  # kept in memory whatever the log cap, so the real end is always seen


@dataclass(frozen=True)
class Outcome:
    """What the operating system saw of one supervised run."""

    returncode: int | None
    wall_seconds: float
    timed_out: bool  # the deadline passed and we stopped it
    killed_by_us: bool  # we sent SIGKILL (so a -9 exit is ours, not the OOM killer's)
    tail: str  # the last TAIL_BYTES of output, decoded
    output_bytes: int  # everything the child wrote, logged or not
    truncated: bool  # the log hit its cap
    stopped: str | None = None  # why the harness ended it early (see supervise's `poll`), if it did


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _holds(pid: str, link: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                return True
        except OSError:
            continue
    return False


def proc_stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a process, None when it is gone."""
    try:
        fields = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (dead, waiting to be reaped)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def tagged_pids(tag: str, pipe: int | None = None) -> list[int]:
    """Live processes (other than us) whose environment carries `TAG_VAR=tag`, or that hold the
    pipe with inode `pipe` (the run's output, inherited by everything it started).

    Our own children are never taken for holding the pipe: between fork and exec, every
    subprocess of ours (a git command, another slot's run) holds a copy of each descriptor we
    have, and killing them would break the controller. The run itself is its own group's leader."""
    needle = f"{TAG_VAR}={tag}".encode()
    link = f"pipe:[{pipe}]" if pipe is not None else None
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        stat = proc_stat(entry)
        if stat is None or stat[0] == "Z":  # gone, or dead and waiting to be reaped
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") or (link is not None and stat[1] != me and _holds(entry, link)):
            found.append(int(entry))
    return found


def _group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` lives (a zombie leader, kept for its pid, does not)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    return any(
        (stat := proc_stat(entry)) is not None and stat[2] == pgid and stat[0] != "Z"
        for entry in entries
        if entry.isdigit()
    )


def sweep(pgid: int, tag: str, rounds: int = 20, pipe: int | None = None) -> None:
    """SIGKILL the group and every tagged process until none is left (a fork bomb keeps forking)."""
    for _ in range(rounds):
        _signal_group(pgid, signal.SIGKILL)
        alive = _group_alive(pgid)
        for pid in tagged_pids(tag, pipe):
            try:
                os.kill(pid, signal.SIGKILL)
                alive = True
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            return
        time.sleep(0.05)


def _exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place, so its pid (= the group id) cannot be reused
    # before we have killed the rest of the group.
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


class _Sink:
    """Writes output to the log up to a cap and keeps the last TAIL_BYTES in memory."""

    def __init__(self, log, limit: int):
        self.log = log
        self.limit = limit
        self.written = 0
        self.total = 0
        self.truncated = False
        self.tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.tail += chunk
        if len(self.tail) > TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]
        room = self.limit - self.written
        if room > 0:
            part = chunk[:room]
            self.log.write(part)
            self.written += len(part)
        if len(chunk) > room and not self.truncated:
            self.truncated = True
            self.log.write(f"\n[trainer] log capped at {self.limit} bytes; the rest was discarded\n".encode())
        self.log.flush()


def supervise(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    limit: float,
    log_path: Path,
    tag: str,
    log_limit: int = 50 * 2**20,
    grace: float = 5.0,
    pass_fds: Sequence[int] = (),
    poll: Callable[[], str | None] | None = None,
) -> Outcome:
    """Run `cmd` until it exits or `limit` seconds pass; output (stdout+stderr) to `log_path`.

    `pass_fds` are inherited by the child (every other descriptor is closed). `poll` is called
    from this thread about five times a second; when it returns a reason, the run is killed at
    once and the reason is the outcome's `stopped`."""
    env = {**env, TAG_VAR: tag}
    with open(log_path, "ab") as log:
        sink = _Sink(log, log_limit)
        start = time.monotonic()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        pgid = proc.pid
        fd = proc.stdout.fileno()
        pipe = os.fstat(fd).st_ino
        os.set_blocking(fd, False)
        deadline = start + limit
        term_at: float | None = None
        killed = False
        eof = False
        stopped: str | None = None

        def drain(wait: float) -> None:
            nonlocal eof
            if eof:
                time.sleep(wait)
                return
            ready, _, _ = select.select([fd], [], [], wait)
            # bounded, so a child that never stops printing cannot keep us from the deadline
            for _ in range(64 if ready else 0):
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    return
                if not chunk:
                    eof = True
                    return
                sink.feed(chunk)

        try:
            while not _exited(proc.pid):
                now = time.monotonic()
                if poll is not None and stopped is None and not killed:
                    stopped = poll()
                    if stopped is not None:
                        killed = True
                        sweep(pgid, tag, pipe=pipe)
                        continue
                if term_at is None and now >= deadline:
                    term_at = now
                    _signal_group(pgid, signal.SIGTERM)
                    for pid in tagged_pids(tag, pipe):  # torchrun workers live in sessions of their own
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except (ProcessLookupError, PermissionError):
                            pass
                if term_at is not None and not killed and now >= term_at + grace:
                    killed = True
                    sweep(pgid, tag, pipe=pipe)
                next_event = deadline if term_at is None else term_at + grace
                drain(max(0.0, min(0.2, next_event - now)) if not killed else 0.1)
        finally:
            # the main process is gone (or we are unwinding): nothing it started may outlive it
            sweep(pgid, tag, pipe=pipe)
            returncode = proc.wait()
            wall = time.monotonic() - start
            # leftovers are dead, so the pipe reaches EOF soon; bounded in case something escaped
            stop = time.monotonic() + 2.0
            while not eof and time.monotonic() < stop:
                drain(0.1)
            proc.stdout.close()
    return Outcome(
        returncode=returncode,
        wall_seconds=wall,
        timed_out=term_at is not None,
        killed_by_us=killed,
        tail=bytes(sink.tail).decode("utf-8", errors="replace"),
        output_bytes=sink.total,
        truncated=sink.truncated,
        stopped=stopped,
    )
