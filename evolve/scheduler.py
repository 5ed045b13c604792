"""The asynchronous steady state: one worker per device slot, proposal workers filling a queue ahead.

The queue is the store itself (individuals with status `queued`), so a crash loses nothing that
was queued and a resume starts where the last process left off. Device workers claim the next
queued individual (re-evaluations first), train it and record the result; proposal workers keep
`slots + ahead` children ready so that a device that frees up starts the next child at once,
even while an LLM thinks. The scheduler knows nothing of operators or promotion: it drives a
`Search` (the engine) and decides when to stop.

Stopping: a condition (`--hours`, `--max-experiments`, `--target-bpb`) or the first SIGINT /
SIGTERM stops proposing and lets every device finish the run it is on; a second signal abandons
those runs (their processes are killed, nothing of them is recorded, they stay queued for the
next `evolve run`). Either way nothing is half-written: each result lands in one transaction.

The duty cycle is training seconds (what train.py timed) over device-held seconds (wall time
the session held its devices, times their number), kept per session in the store.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from trainer.process import TAG_VAR, alive, proc_stat

from .errors import EvolveError
from .store import Individual, Store

TICK = 0.5  # seconds between the main loop's checks (signals, hours, the live view)
LOG_HEAD = 64 * 1024  # bytes kept from the start of a long log ...
LOG_TAIL = 512 * 1024  # ... and from its end, before it is gzipped
SAVE_EVERY = 5.0  # seconds between writes of the session's counters (each evaluation writes too)


class StopReason(str, Enum):
    DONE = "done"  # max experiments reached and every one of them finished
    HOURS = "hours"
    TARGET = "target"  # the best score reached --target-bpb
    INTERRUPTED = "interrupted"  # SIGINT / SIGTERM: in-flight runs finished
    ABANDONED = "abandoned"  # a second signal: in-flight runs killed and left queued
    STALLED = "stalled"  # proposals keep failing and nothing is left to run
    EXHAUSTED = "exhausted"  # every operator is spent (e.g. the LLM's --max-llm-usd), queue drained
    ERROR = "error"  # a bug: the exception is re-raised after a clean stop


@dataclass(frozen=True)
class StopConditions:
    hours: float | None = None  # wall-clock hours of this session
    max_experiments: int | None = None  # children trained in the run, over all sessions
    target_bpb: float | None = None  # stop once the best accepted mean is at or below this

    def __post_init__(self) -> None:
        if self.hours is not None and self.hours <= 0:
            raise ValueError("hours must be > 0")
        if self.max_experiments is not None and self.max_experiments < 0:
            raise ValueError("max_experiments must be >= 0")


@dataclass
class EvalReport:
    """What one device run cost: for the duty cycle."""

    wall_seconds: float = 0.0
    training_seconds: float = 0.0
    recorded: bool = True


class Search(Protocol):
    """What the scheduler drives. Each method is called from worker threads concurrently."""

    def claim(self) -> Individual | None: ...  # the next queued individual, marked running
    def evaluate(self, slot: int, individual: Individual) -> EvalReport: ...
    def propose(self) -> bool: ...  # one proposal; True when a child was queued
    def queued(self) -> int: ...
    def experiments(self) -> int: ...  # children trained or queued to train (not refused)
    def target_reached(self, target: float) -> bool: ...


# --- the session row: device time and duty cycle ------------------------------------------------


@dataclass
class Session:
    """Device time of one `evolve run` process, written to the `sessions` table as it goes."""

    store: Store
    run: str
    devices: Sequence[str]
    started: float = field(default_factory=time.time)
    busy_seconds: float = 0.0
    training_seconds: float = 0.0
    evaluations: int = 0
    id: int = 0

    def __post_init__(self) -> None:
        with self.store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO sessions (run, pid, devices, slots, started, updated) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self.run,
                    os.getpid(),
                    ",".join(self.devices),
                    len(self.devices),
                    self.started,
                    self.started,
                ),
            )
            self.id = int(cur.lastrowid or 0)

    @property
    def slots(self) -> int:
        return len(self.devices)

    def held_seconds(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.started) * self.slots

    def add(self, report: EvalReport) -> None:
        self.busy_seconds += report.wall_seconds
        self.training_seconds += report.training_seconds
        self.evaluations += int(report.recorded)

    def save(self, ended: bool = False, reason: str = "") -> None:
        """Write the counters (after each evaluation and every few seconds)."""
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE sessions SET updated = ?, held_seconds = ?, busy_seconds = ?, training_seconds = ?,"
                " evaluations = ?, ended = CASE WHEN ? THEN ? ELSE ended END,"
                " stop_reason = CASE WHEN ? THEN ? ELSE stop_reason END WHERE id = ?",
                (now, self.held_seconds(now), self.busy_seconds, self.training_seconds, self.evaluations,
                 ended, now, bool(reason), reason, self.id),
            )  # fmt: skip


@dataclass(frozen=True)
class DutySummary:
    sessions: int
    held_seconds: float
    busy_seconds: float
    training_seconds: float
    evaluations: int
    wall_seconds: float  # summed session durations

    @property
    def duty_cycle(self) -> float | None:
        """Training seconds / device-held seconds (None before any device time)."""
        return self.training_seconds / self.held_seconds if self.held_seconds > 0 else None

    @property
    def busy_fraction(self) -> float | None:
        """Seconds a device was running a job / device-held seconds."""
        return self.busy_seconds / self.held_seconds if self.held_seconds > 0 else None

    @property
    def per_hour(self) -> float | None:
        return self.evaluations / (self.wall_seconds / 3600) if self.wall_seconds > 0 else None


def duty_summary(store: Store, run: str) -> DutySummary:
    """Device time over every session of `run` (a killed session counts up to its last update)."""
    rows = store.transaction
    with rows() as conn:
        r = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(held_seconds), 0), COALESCE(SUM(busy_seconds), 0),"
            " COALESCE(SUM(training_seconds), 0), COALESCE(SUM(evaluations), 0),"
            " COALESCE(SUM(COALESCE(ended, updated) - started), 0) FROM sessions WHERE run = ?",
            (run,),
        ).fetchone()
    return DutySummary(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5])


def latest_session(store: Store, run: str) -> dict | None:
    """The latest session of `run`, running or not (None before the first)."""
    with store.transaction() as conn:
        r = conn.execute("SELECT * FROM sessions WHERE run = ? ORDER BY id DESC LIMIT 1", (run,)).fetchone()
    return dict(r) if r is not None else None


def active_session(store: Store, run: str) -> dict | None:
    """The session of `run` running now: the latest one, not ended, its process alive on this host."""
    r = latest_session(store, run)
    if r is None or r["ended"] is not None:
        return None
    try:
        os.kill(int(r["pid"]), 0)
    except ProcessLookupError:
        return None  # killed without a chance to say so: `evolve run` resumes it
    except PermissionError:
        pass
    return r


# --- the scheduler --------------------------------------------------------------------------------


@dataclass
class SlotState:
    individual: str | None = None
    since: float = 0.0


class Scheduler:
    """Runs a `Search` on `slots` devices until a stop condition or a signal."""

    def __init__(
        self,
        search: Search,
        session: Session,
        *,
        stop: StopConditions = StopConditions(),
        ahead: int = 2,
        proposers: int = 2,
        max_failed_proposals: int = 200,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.search = search
        self.session = session
        self.conditions = stop
        self.queue_limit = session.slots + ahead
        self.n_proposers = max(1, proposers)
        self.max_failed_proposals = max_failed_proposals
        self.on_tick = on_tick
        self.cond = threading.Condition()
        self.slots = [SlotState() for _ in range(session.slots)]
        self.reason: StopReason | None = None
        self.error: BaseException | None = None
        self.stopping = threading.Event()  # no new claims, no new proposals
        self.abandoned = threading.Event()  # in-flight runs are killed and not recorded
        self._active = 0  # device runs in progress
        self._proposing = 0  # proposals in progress (reserved against the queue and the max)
        self._proposers_alive = 0
        self._failed_in_a_row = 0
        self.last_failure = ""
        self._signals = 0
        self.on_abandon: Callable[[], None] | None = None

    # --- stopping -----------------------------------------------------------------------------
    def request_stop(self, reason: StopReason) -> None:
        with self.cond:
            if self.reason is None:
                self.reason = reason
            self.stopping.set()
            self.cond.notify_all()

    def abandon(self) -> None:
        """Kill the training runs in flight; they are not recorded and stay queued for a resume."""
        self.abandoned.set()
        self.request_stop(StopReason.ABANDONED)
        with self.cond:
            self.reason = StopReason.ABANDONED
        kill_training_children()
        if self.on_abandon is not None:  # runs that are not our children (a Ray cluster's)
            self.on_abandon()

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._signals += 1
        if self._signals == 1:
            self.request_stop(StopReason.INTERRUPTED)
        else:
            self.abandon()

    # --- workers ------------------------------------------------------------------------------
    def _device_worker(self, slot: int) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopping.is_set():
                        return
                    individual = self.search.claim()
                    if individual is not None:
                        self._active += 1
                        self.slots[slot] = SlotState(individual.id, time.time())
                        break
                    if self._proposers_alive == 0 and self._proposing == 0 and self._active == 0:
                        # Nothing queued, nothing running, nothing more coming.
                        failing = self._failed_in_a_row >= self.max_failed_proposals
                        reason = StopReason.STALLED if failing else StopReason.DONE
                        if getattr(self.search, "exhausted", False):
                            reason = StopReason.EXHAUSTED
                        self.request_stop(reason)
                        return
                    self.cond.wait(TICK)
            report = EvalReport(recorded=False)
            try:
                report = self.search.evaluate(slot, individual)
            except BaseException as exc:  # a bug: stop everything cleanly, re-raise in run()
                self._fail(exc)
            finally:
                with self.cond:
                    self._active -= 1
                    self.slots[slot] = SlotState()
                    self.session.add(report)
                    self.cond.notify_all()
                if report.recorded:
                    self._save()
            target = self.conditions.target_bpb
            if target is not None and self.search.target_reached(target):
                self.request_stop(StopReason.TARGET)  # before this worker claims the next one

    def _wants_proposal(self) -> bool:
        limit = self.conditions.max_experiments
        if limit is not None and self.search.experiments() + self._proposing >= limit:
            return False
        if getattr(self.search, "exhausted", False):  # every operator is spent: nothing more comes
            return False
        return self._failed_in_a_row < self.max_failed_proposals

    def _proposal_worker(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.stopping.is_set() and self._wants_proposal():
                        if self.search.queued() + self._proposing < self.queue_limit:
                            break
                        self.cond.wait(TICK)
                    if self.stopping.is_set() or not self._wants_proposal():
                        return
                    self._proposing += 1
                queued = False
                try:
                    queued = self.search.propose()
                except BaseException as exc:
                    self._fail(exc)
                finally:
                    with self.cond:
                        self._proposing -= 1
                        self._failed_in_a_row = 0 if queued else self._failed_in_a_row + 1
                        self.cond.notify_all()
        finally:
            with self.cond:
                self._proposers_alive -= 1
                self.cond.notify_all()

    def _save(self, ended: bool = False, reason: str = "") -> None:
        """Write the session's counters; a store that fails (a full disk) stops the run cleanly."""
        try:
            with self.cond:
                self.session.save(ended=ended, reason=reason)
        except EvolveError as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
        self.request_stop(StopReason.ERROR)

    # --- the main loop ------------------------------------------------------------------------
    def _check_conditions(self) -> None:
        c = self.conditions
        if c.hours is not None and time.time() - self.session.started >= c.hours * 3600:
            self.request_stop(StopReason.HOURS)
        if c.target_bpb is not None and self.search.target_reached(c.target_bpb):
            self.request_stop(StopReason.TARGET)

    def install_signals(self) -> dict:
        """SIGINT/SIGTERM: the first stops cleanly, the second abandons. Returns the old handlers."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    @staticmethod
    def restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def run(self, install_signals: bool = True) -> StopReason:
        """Run until stopped; returns why. With `install_signals`, handles SIGINT/SIGTERM meanwhile."""
        previous = self.install_signals() if install_signals else {}
        if self.stopping.is_set():  # stopped before it started (a signal during the baseline)
            self.session.save(ended=True, reason=(self.reason or StopReason.INTERRUPTED).value)
            self.restore_signals(previous)
            return self.reason or StopReason.INTERRUPTED
        threads = [
            threading.Thread(target=self._device_worker, args=(i,), name=f"evolve-device-{i}", daemon=True)
            for i in range(self.session.slots)
        ]
        self._proposers_alive = self.n_proposers
        threads += [
            threading.Thread(target=self._proposal_worker, name=f"evolve-propose-{i}", daemon=True)
            for i in range(self.n_proposers)
        ]
        try:
            if self.conditions.max_experiments is not None or self.conditions.target_bpb is not None:
                self._check_conditions()
            for t in threads:
                t.start()
            saved = time.time()
            while any(t.is_alive() for t in threads):
                self._check_conditions()
                if time.time() - saved >= SAVE_EVERY:
                    self._save()
                    saved = time.time()
                if self.on_tick is not None:
                    self.on_tick()
                for t in threads:
                    t.join(TICK / len(threads))
        except BaseException as exc:  # KeyboardInterrupt without our handler, or a bug in on_tick
            self.abandon()
            for t in threads:
                t.join(5.0)
            self._fail(exc)
        finally:
            self.restore_signals(previous)
            self._save(ended=True, reason=(self.reason or StopReason.DONE).value)
        if self.on_tick is not None:
            self.on_tick()
        if self.error is not None:
            raise self.error
        return self.reason or StopReason.DONE

    def busy(self) -> list[SlotState]:
        with self.cond:
            return list(self.slots)


def kill_training_children() -> list[int]:
    """SIGKILL the process groups of our training runs (our children tagged by the trainer)."""
    me = os.getpid()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(entry)
        if stat is None or stat[1] != me:
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(b"EVOLVE_RUN_TAG=") for item in environ):
            try:
                os.killpg(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def kill_leftover_runs(pool_dir: Path, logs_dir: Path | None = None, wait: float = 10.0) -> list[int]:
    """SIGKILL training runs that a killed `evolve run` left working in this workspace.

    A controller killed with SIGKILL cannot always take its runs with it: a sandboxed run dies
    with it (bubblewrap's --die-with-parent), but one run without isolation goes on, holding a
    device (and its memory) and writing into folders the next session reuses. On resume, every
    process the trainer tagged that works in one of this workspace's engine runs (see `pool_runs`)
    is killed with its process group, and waited for. `evolve validate`'s runs are left alone."""
    killed = pool_runs(pool_dir, logs_dir)
    for pid in killed:
        try:
            group = os.getpgid(pid)
            if group != os.getpgid(0):  # its own group (the trainer starts each run in one): all of it
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + wait
    while any(alive(p) for p in killed) and time.time() < deadline:
        time.sleep(0.05)
    return killed


def _engine_run_folder(cwd: Path, pool: Path, logs: Path | None) -> bool:
    """True for a slot of the pool (`<pool>/<n>` or below) and for the copy an engine run trains
    in (`<logs>/<individual>/<purpose>-s<seed>-<session>/run-<hex>/...`, not a validation's)."""
    if cwd.is_relative_to(pool):
        rel = cwd.relative_to(pool).parts
        return bool(rel) and rel[0].isdigit()
    if logs is not None and cwd.is_relative_to(logs):
        rel = cwd.relative_to(logs).parts
        return len(rel) >= 3 and not rel[1].startswith("validation-") and rel[2].startswith("run-")
    return False


def pool_runs(pool_dir: Path, logs_dir: Path | None = None) -> list[int]:
    """Processes (other than us) that the trainer tagged and whose working directory is one of the
    engine's: a slot of the pool, or (with `logs_dir`, the workspace's `.evolve/logs`) the copy of
    a worktree that a run trains in. Sorted. A sandboxed run's outer bubblewrap process is found
    this way (the processes inside see other paths); killing its group ends the sandbox."""
    base = pool_dir.resolve()
    logs = logs_dir.resolve() if logs_dir is not None else None
    tag = f"{TAG_VAR}=".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            environ = Path("/proc", entry, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if _engine_run_folder(cwd, base, logs) and any(item.startswith(tag) for item in environ):
            found.append(int(entry))
    return sorted(found)


def session_rows(store: Store, run: str) -> list[dict]:
    """Every session of `run`, oldest first (for `evolve status --json`)."""
    with store.transaction() as conn:
        rows = conn.execute("SELECT * FROM sessions WHERE run = ? ORDER BY id", (run,)).fetchall()
    return [json.loads(json.dumps(dict(r))) for r in rows]


# --- housekeeping of a session: one run per workspace, bounded logs ---------------------------------


@contextmanager
def workspace_lock(state_dir: Path) -> Iterator[None]:
    """Only one `evolve run` per workspace: a second one would claim the same queue."""
    path = state_dir / "run.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole run, closed below
    except OSError as exc:
        raise EvolveError(
            f"cannot take the run lock {path}: {exc.strerror} (is the workspace read-only or its disk full?)"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise EvolveError(
                f"another `evolve run` (pid {pid}) is using {state_dir.parent}; stop it first (Ctrl-C)"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError:
            pass  # the pid is only a hint for the message above; the lock is what counts
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compress_log(path: str | None) -> str | None:
    """Trim a long log to its head and tail, gzip it, and return the new path."""
    if not path or not Path(path).is_file():
        return path
    src = Path(path)
    data = src.read_bytes()
    if len(data) > LOG_HEAD + LOG_TAIL:
        cut = len(data) - LOG_HEAD - LOG_TAIL
        data = data[:LOG_HEAD] + f"\n[evolve] ... {cut} bytes trimmed ...\n".encode() + data[-LOG_TAIL:]
    dst = src.with_name(src.name + ".gz")
    tmp = src.with_name(src.name + ".gz.tmp")
    try:
        with gzip.open(tmp, "wb", compresslevel=6) as out:
            out.write(data)
        os.replace(tmp, dst)
    except OSError:  # a full disk: keep the plain log, leave no half-written archive
        tmp.unlink(missing_ok=True)
        return path
    src.unlink()
    return str(dst)


def read_log(path: str | None) -> str:
    """The text of a log, gzipped or not ("" when it is gone)."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return ""
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    return raw.decode(errors="replace")
