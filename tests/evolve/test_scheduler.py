"""The scheduler's steady state, stop conditions, signals and duty cycle.

The search it drives is scripted here (short sleeps instead of training runs). Nothing is timed:
where a test needs two runs in flight at once, a queue filled ahead, a proposal slower than a run
or a signal while runs are in flight, the scripted runs and proposals wait for that to be so (an
event, a barrier), with a generous timeout that only guards against a hang and fails the test. The
real engine under the same scheduler is covered by test_engine, test_cli_run and test_resume.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
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

HANG = 60.0  # seconds: only a guard against a hang; every wait ends on an event long before


def wait_until(done: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    """Return once `done()`; an AssertionError naming `what` after `timeout` seconds (a hang)."""
    give_up = time.monotonic() + timeout
    while not done():
        if time.monotonic() > give_up:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.005)


@dataclass
class Item:
    id: str
    number: int  # 1 for the first run claimed, 2 for the second, ...


class ScriptedSearch:
    """Proposals take `propose_s`, runs take `run_s`; every call is logged for the assertions.

    `hold(number)` is called as the number-th claimed run starts, before it "trains": a test waits
    there for what it needs. After `quick_proposals` proposals, each further proposal ends only
    once a device has asked for work since it began: a proposal slower than the run beside it."""

    def __init__(self, run_s=0.05, propose_s=0.01, fail_proposals=False, boom_at=None, hold=None,
                 quick_proposals=None):  # fmt: skip
        self.run_s, self.propose_s = run_s, propose_s
        self.fail_proposals, self.boom_at = fail_proposals, boom_at
        self.hold: Callable[[int], None] | None = hold
        self.quick_proposals = quick_proposals
        self.lock = threading.Lock()
        self.queue: list[str] = []
        self.made = 0
        self.begun = 0  # proposals begun
        self.asks = 0  # claims: a device asking for work
        self.claimed = 0
        self.done: list[str] = []
        self.running = 0
        self.max_queue_seen = 0
        self.max_running = 0
        self.scheduler: Scheduler | None = None

    def claim(self):
        with self.lock:
            self.asks += 1
            if not self.queue:
                return None
            self.running += 1
            self.claimed += 1
            self.max_running = max(self.max_running, self.running)
            return Item(self.queue.pop(0), self.claimed)

    def evaluate(self, slot, item):
        if self.boom_at is not None and len(self.done) >= self.boom_at:
            raise RuntimeError("a bug in the engine")
        if self.hold is not None:
            self.hold(item.number)
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
        with self.lock:
            self.begun += 1
            number, asks = self.begun, self.asks
        time.sleep(self.propose_s)
        if self.quick_proposals is not None and number > self.quick_proposals:
            wait_until(lambda: self.asks > asks or self.scheduler.stopping.is_set(),
                       f"a device to ask for work while proposal {number} was being made")  # fmt: skip
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


def meet(parties: int, then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A `hold` under which the first `parties` runs wait until they are all in flight, then call
    `then(number)` (the others run straight through)."""
    barrier = threading.Barrier(parties)

    def hold(number: int) -> None:
        if number > parties:
            return
        try:
            barrier.wait(HANG)
        except threading.BrokenBarrierError:
            raise AssertionError(f"the first {parties} runs were never in flight at once") from None
        if then is not None:
            then(number)

    return hold


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
    search = ScriptedSearch(run_s=0.03, propose_s=0.02, hold=meet(2))  # the first two wait for each other
    sched = make(store, search, slots=2, ahead=2, proposers=3, stop=StopConditions(max_experiments=15))
    assert sched.run(install_signals=False) is StopReason.DONE
    assert search.made == 15 and sorted(search.done) == sorted(f"c{i}" for i in range(1, 16))
    assert search.max_queue_seen <= 2 + 2
    assert search.max_running == 2  # both devices were used at once, never more


def test_devices_never_wait_for_a_slow_proposal_while_children_are_ready(store):
    # The first two runs end only once the proposers have filled the queue (2 slots + 2 ahead)
    # while both devices are busy; after that, a proposal ends only once a device has asked for
    # work since it began. A device that waited for the proposal in progress instead of taking a
    # ready child would wait for ever (here: until the hang guard fails the test).
    def full(number: int) -> None:
        wait_until(
            lambda: search.queued() == 4, "the proposers to fill the queue while both devices are busy"
        )

    search = ScriptedSearch(run_s=0.05, propose_s=0.0, hold=meet(2, then=full), quick_proposals=6)
    sched = make(store, search, slots=2, ahead=2, proposers=2, stop=StopConditions(max_experiments=12))
    assert sched.run(install_signals=False) is StopReason.DONE
    assert search.made == 12 and sorted(search.done) == sorted(f"c{i}" for i in range(1, 13))
    assert search.max_queue_seen == 4 and search.max_running == 2
    summary = duty_summary(store, "r")
    assert summary.busy_seconds == pytest.approx(12 * 0.05)
    assert summary.duty_cycle == pytest.approx(summary.training_seconds / summary.held_seconds)
    # each run trained 0.8 of the time it held its device, and held it at least that long
    assert 0 < summary.duty_cycle <= 0.8 and summary.evaluations == 12


def test_hours_and_target_stop_after_the_runs_in_flight_finish(store):
    # An hour's session: once both devices are busy and children are queued, its hour is up.
    def hour_is_up(number: int) -> None:
        wait_until(lambda: search.queued() > 0, "a child queued ahead")
        if number == 1:
            sched.session.started -= 3600
        wait_until(sched.stopping.is_set, "the scheduler to see that its hour is up")

    search = ScriptedSearch(run_s=0.05, hold=meet(2, then=hour_is_up))
    sched = make(store, search, slots=2, stop=StopConditions(hours=1))
    assert sched.run(install_signals=False) is StopReason.HOURS
    assert search.running == 0 and len(search.done) == 2  # the two in flight finished; no more began
    assert search.queued() > 0  # the rest stays queued for the next session
    target = ScriptedSearch(run_s=0.05)
    sched = make(store, target, slots=1, stop=StopConditions(target_bpb=3))
    assert sched.run(install_signals=False) is StopReason.TARGET
    assert len(target.done) == 3  # the device that reached it claims nothing more


def _interrupt(sched: Scheduler, times: int) -> Callable[[int], None]:
    """A `hold` that, once two runs are in flight, sends SIGINT (and with `times=2` a second one,
    after the scheduler has seen the first: two before its handler runs would count as one)."""

    def send(number: int) -> None:
        if number == 1:
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(sched.stopping.is_set, "the scheduler to stop after the first SIGINT")
            if times == 2:
                os.kill(os.getpid(), signal.SIGINT)
                wait_until(sched.abandoned.is_set, "the scheduler to abandon its runs after the second")
        wait_until(sched.stopping.is_set, "the scheduler to stop after SIGINT")

    return meet(2, then=send)


def test_first_sigint_finishes_in_flight_runs_second_abandons_them(store):
    search = ScriptedSearch(run_s=0.05)
    sched = make(store, search, slots=2)
    search.hold = _interrupt(sched, 1)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite was started in the background
    assert sched.run() is StopReason.INTERRUPTED
    assert len(search.done) == 2 and search.running == 0  # both in-flight runs were finished
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    search = ScriptedSearch(run_s=HANG)  # runs that end early only when abandoned
    sched = make(store, search, slots=2)
    search.hold = _interrupt(sched, 2)
    assert sched.run() is StopReason.ABANDONED
    assert search.done == [] and search.running == 0  # killed, nothing recorded


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
