"""The scheduler's steady state, stop conditions, signals and duty cycle.

The search it drives is scripted here (short sleeps instead of training runs): these are tests of
concurrency and timing that real training would make slow and load-dependent. The real engine
under the same scheduler is covered by test_engine, test_cli_run and test_resume.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from evolve.scheduler import (
    EvalReport,
    Scheduler,
    Session,
    StopConditions,
    StopReason,
    duty_summary,
)
from evolve.store import Store


@dataclass
class Item:
    id: str


class ScriptedSearch:
    """Proposals take `propose_s`, runs take `run_s`; every call is logged for the assertions."""

    def __init__(self, run_s=0.05, propose_s=0.01, fail_proposals=False, boom_at=None):
        self.run_s, self.propose_s = run_s, propose_s
        self.fail_proposals, self.boom_at = fail_proposals, boom_at
        self.lock = threading.Lock()
        self.queue: list[str] = []
        self.made = 0
        self.done: list[str] = []
        self.running = 0
        self.max_queue_seen = 0
        self.max_running = 0
        self.idle_with_work = 0  # claims that found nothing while work was queued (never expected)
        self.scheduler: Scheduler | None = None

    def claim(self):
        with self.lock:
            if not self.queue:
                return None
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            return Item(self.queue.pop(0))

    def evaluate(self, slot, item):
        if self.boom_at is not None and len(self.done) >= self.boom_at:
            raise RuntimeError("a bug in the engine")
        end = time.time() + self.run_s
        while time.time() < end:
            if self.scheduler is not None and self.scheduler.abandoned.is_set():
                with self.lock:
                    self.running -= 1
                return EvalReport(wall_seconds=self.run_s, recorded=False)
            time.sleep(0.005)
        with self.lock:
            self.running -= 1
            self.done.append(item.id)
        return EvalReport(wall_seconds=self.run_s, training_seconds=self.run_s * 0.8)

    def propose(self):
        time.sleep(self.propose_s)
        if self.fail_proposals:
            return False
        with self.lock:
            self.made += 1
            self.queue.append(f"c{self.made}")
            self.max_queue_seen = max(self.max_queue_seen, len(self.queue))
        return True

    def queued(self):
        with self.lock:
            return len(self.queue)

    def experiments(self):
        with self.lock:
            return self.made

    def target_reached(self, target):
        with self.lock:
            return len(self.done) >= target


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "evolve.db")
    s.add_run("r", strategy="population", profile="tiny")
    yield s
    s.close()


def make(store, search, slots=2, **kw):
    session = Session(store, "r", ("cpu",) * slots)
    sched = Scheduler(search, session, **kw)
    search.scheduler = sched
    return sched


def test_max_experiments_is_exact_and_the_queue_stays_bounded_with_racing_proposers(store):
    search = ScriptedSearch(run_s=0.03, propose_s=0.02)
    sched = make(store, search, slots=2, ahead=2, proposers=3, stop=StopConditions(max_experiments=15))
    assert sched.run(install_signals=False) is StopReason.DONE
    assert search.made == 15 and sorted(search.done) == sorted(f"c{i}" for i in range(1, 16))
    assert search.max_queue_seen <= 2 + 2
    assert search.max_running == 2  # both devices were used at once


def test_devices_never_wait_for_a_slow_proposal_while_children_are_ready(store):
    # Proposals are as slow as runs; with children made ahead both devices stay busy.
    search = ScriptedSearch(run_s=0.2, propose_s=0.1)
    sched = make(store, search, slots=2, ahead=2, proposers=2, stop=StopConditions(max_experiments=12))
    start = time.time()
    sched.run(install_signals=False)
    wall = time.time() - start
    summary = duty_summary(store, "r")
    # 12 runs of 0.2 s on 2 devices = 1.2 s busy each at best; allow start-up and a loaded machine.
    assert wall < 3.0
    assert summary.busy_seconds == pytest.approx(12 * 0.2)
    assert summary.duty_cycle == pytest.approx(summary.training_seconds / summary.held_seconds)
    assert 0.3 < summary.duty_cycle <= 0.8 and summary.evaluations == 12


def test_hours_and_target_stop_after_the_runs_in_flight_finish(store):
    search = ScriptedSearch(run_s=0.3)
    sched = make(store, search, slots=2, stop=StopConditions(hours=0.6 / 3600))
    assert sched.run(install_signals=False) is StopReason.HOURS
    assert search.running == 0 and len(search.done) >= 2  # nothing left half-done
    assert search.queued() > 0  # the rest stays queued for the next session
    target = ScriptedSearch(run_s=0.05)
    sched = make(store, target, slots=1, stop=StopConditions(target_bpb=3))
    assert sched.run(install_signals=False) is StopReason.TARGET
    assert 3 <= len(target.done) <= 4


def _signal_later(delays):
    def fire():
        for d in delays:
            time.sleep(d)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def test_first_sigint_finishes_in_flight_runs_second_abandons_them(store):
    search = ScriptedSearch(run_s=0.6)
    sched = make(store, search, slots=2)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite was started in the background
    _signal_later([0.3])
    assert sched.run() is StopReason.INTERRUPTED
    assert len(search.done) == 2 and search.running == 0  # both in-flight runs were finished
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    search = ScriptedSearch(run_s=5.0)
    sched = make(store, search, slots=2)
    start = time.time()
    _signal_later([0.3, 0.2])
    assert sched.run() is StopReason.ABANDONED
    assert time.time() - start < 3.0 and search.done == []  # killed, nothing recorded


def test_proposals_that_keep_failing_stall_the_run_instead_of_spinning_forever(store):
    search = ScriptedSearch(fail_proposals=True, propose_s=0.0)
    sched = make(store, search, slots=1, max_failed_proposals=20)
    assert sched.run(install_signals=False) is StopReason.STALLED


def test_a_bug_in_the_search_stops_everything_and_is_raised(store):
    search = ScriptedSearch(run_s=0.02, boom_at=3)
    sched = make(store, search, slots=2)
    with pytest.raises(RuntimeError, match="a bug in the engine"):
        sched.run(install_signals=False)
    rows = store.transaction
    with rows() as conn:
        reason = conn.execute("SELECT stop_reason, ended FROM sessions").fetchone()
    assert reason[0] == "error" and reason[1] is not None
