"""Executors: where training jobs run. `LocalExecutor` keeps every local device busy, one job each.

The search hands an executor `Job`s and gets `Future[RunResult]`s back; it never learns which
device ran what. A cluster executor (Ray) implements the same interface and must pass the same
contract tests (tests/trainer/test_executor.py).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prepare.profiles import Profile

from .errors import TrainerError
from .result import RunResult
from .runner import normalize_devices, run


@dataclass(frozen=True)
class Job:
    """One training run to do: which code, at which (depth, budget, seed), on how many devices."""

    worktree: Path
    depth: int
    budget: float
    seed: int
    profile: str | Profile | None = None
    data_dir: Path | None = None
    log_dir: Path | None = None
    gpus_per_run: int = 1
    extra_env: Mapping[str, str] = field(default_factory=dict)
    allowance: float | None = None
    script: str = "train.py"


class Executor(ABC):
    """Runs jobs concurrently and hands back their results as futures."""

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many single-device jobs can run at the same time."""

    @abstractmethod
    def submit(self, job: Job) -> Future[RunResult]:
        """Queue `job`; the future resolves to its RunResult (a failed run is a result, not an error)."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; with `wait`, return once the running ones are done."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True)


Runner = Callable[..., RunResult]


class LocalExecutor(Executor):
    """One job per device slot on this host: GPU indices, or several "cpu" slots.

    A job asks for `gpus_per_run` slots; it waits until that many are free, takes them all at once
    (never some, so two waiting jobs cannot deadlock), and gives them back when it ends."""

    def __init__(self, devices: Sequence[int | str] | int | str, *, runner: Runner = run):
        self._devices = normalize_devices(devices)
        self._free = list(range(len(self._devices)))  # slot numbers; "cpu" slots look alike
        self._cond = threading.Condition()
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=len(self._devices), thread_name_prefix="evolve-slot")
        self._closed = False

    @classmethod
    def cpu(cls, n: int) -> LocalExecutor:
        return cls(("cpu",) * n)

    @property
    def slots(self) -> int:
        return len(self._devices)

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    def _take(self, n: int) -> list[int]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._free) >= n)
            taken, self._free = self._free[:n], self._free[n:]
            return taken

    def _give_back(self, taken: list[int]) -> None:
        with self._cond:
            self._free = sorted(self._free + taken)
            self._cond.notify_all()

    def _work(self, job: Job) -> RunResult:
        taken = self._take(job.gpus_per_run)
        try:
            return self._runner(
                job.worktree,
                depth=job.depth,
                budget=job.budget,
                seed=job.seed,
                devices=tuple(self._devices[i] for i in taken),
                profile=job.profile,
                data_dir=job.data_dir,
                log_dir=job.log_dir,
                allowance=job.allowance,
                extra_env=dict(job.extra_env),
                script=job.script,
            )
        finally:
            self._give_back(taken)

    def submit(self, job: Job) -> Future[RunResult]:
        if self._closed:
            raise TrainerError("this executor was shut down; create a new one to run more jobs")
        if not 1 <= job.gpus_per_run <= self.slots:
            raise TrainerError(f"a job asks for {job.gpus_per_run} devices; this executor has {self.slots}")
        return self._pool.submit(self._work, job)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
