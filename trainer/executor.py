"""Executors: where training jobs run. `LocalExecutor` keeps every local device busy, one job each.

The search hands an executor `Job`s and gets `Future[RunResult]`s back; it never learns which
device ran what. A cluster executor (Ray) implements the same interface and must pass the same
contract tests (tests/trainer/test_executor.py).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prepare.profiles import Profile

from .errors import TrainerError
from .quarantine import EventHook, Quarantine, device_fault, probe_device
from .result import RunResult
from .runner import cpu_name, gpu_name, normalize_devices, run


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
    writable: tuple[Path, ...] = ()  # folders train.py may write besides its worktree (on its node)
    budget_unit: str | None = None  # "seconds" or "tokens"; None: the profile's
    window_limit: float | None = None  # wall-clock cap of the training window (see trainer.run)
    exit_grace: float | None = None  # seconds a run may take to exit after its handover


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

    @property
    def device_models(self) -> tuple[str, ...]:
        """The device models its runs may land on (GPU names, or the CPU's model); empty when it
        cannot tell. Under a time budget a score compares only with scores on the same model."""
        return ()

    def matches_model(self, name: str) -> bool:
        """True when its runs land on the device model `name` (as a run's provenance names it)."""
        return name in self.device_models

    def abandon(self) -> None:  # noqa: B027 - a default that does nothing, on purpose
        """Kill the runs in flight now; their futures resolve soon (to results nobody records).

        Nothing to do here for runs that are this process's children: the search kills those
        itself. An executor whose runs live elsewhere (Ray) cancels them."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True)


Runner = Callable[..., RunResult]


class LocalExecutor(Executor):
    """One job per device slot on this host: GPU indices, or several "cpu" slots.

    A job asks for `gpus_per_run` slots; it waits until that many are free, takes them all at once
    (never some, so two waiting jobs cannot deadlock), and gives them back when it ends.

    On GPUs, a single-device run that crashes with a device error (see `trainer.quarantine`) is run
    once more on another GPU; the result of that second run is the job's result. A GPU whose runs
    keep failing where they pass elsewhere is quarantined after `quarantine_after` strikes: it gets
    no more jobs, `quarantined` lists it and `on_event(kind, payload)` is told."""

    def __init__(
        self,
        devices: Sequence[int | str] | int | str,
        *,
        runner: Runner = run,
        quarantine_after: int = 3,
        retry_device_faults: bool = True,
        on_event: EventHook | None = None,
    ):
        self._devices = normalize_devices(devices)
        self._free = list(range(len(self._devices)))  # slot numbers; "cpu" slots look alike
        self._cond = threading.Condition()
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=len(self._devices), thread_name_prefix="evolve-slot")
        self._closed = False
        self._on_gpus = self._devices[0] != "cpu"
        self._retry = retry_device_faults and self._on_gpus
        self.quarantine = Quarantine(self._devices, after=quarantine_after, on_event=self._event)
        self.on_event = on_event

    @classmethod
    def cpu(cls, n: int) -> LocalExecutor:
        return cls(("cpu",) * n)

    @property
    def slots(self) -> int:
        return len(self._devices) - len(self.quarantine.quarantined)

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def device_models(self) -> tuple[str, ...]:
        if not self._on_gpus:
            return (cpu_name(),) if cpu_name() else ()
        names = dict.fromkeys(gpu_name(d) for d in self._devices)
        return tuple(n for n in names if n != "cuda")  # "cuda": a GPU whose name torch cannot tell

    @property
    def quarantined(self) -> dict[str, str]:
        """GPUs taken out of rotation, with the reason."""
        return self.quarantine.quarantined

    def _event(self, kind: str, payload: dict) -> None:
        if kind == "device_quarantined":
            with self._cond:
                slot = self._devices.index(payload["device"])
                self._free = [s for s in self._free if s != slot]
                self._cond.notify_all()  # a job waiting for more devices than remain must hear it
        if self.on_event is not None:
            self.on_event(kind, payload)

    def _usable(self, avoid: frozenset[int]) -> list[int]:
        out = self.quarantine.quarantined
        return [s for s in self._free if s not in avoid and self._devices[s] not in out]

    def _take(self, n: int, avoid: frozenset[int] = frozenset()) -> list[int] | None:
        """`n` free slots outside `avoid`; None when fewer than `n` such devices remain healthy."""
        with self._cond:
            while True:
                usable = self._usable(avoid)
                if len(usable) >= n:
                    taken = usable[:n]
                    self._free = [s for s in self._free if s not in taken]
                    return taken
                healthy = [d for d in self.quarantine.healthy() if self._devices.index(d) not in avoid]
                if len(healthy) < n:
                    return None
                self._cond.wait()

    def _give_back(self, taken: list[int]) -> None:
        with self._cond:
            out = self.quarantine.quarantined
            self._free = sorted(self._free + [s for s in taken if self._devices[s] not in out])
            self._cond.notify_all()

    def _env(self, job: Job) -> dict[str, str]:
        """The job's extra environment; CPU slots share the cores instead of each taking all of
        them (N processes of N threads each on the same cores run several times slower)."""
        env = dict(job.extra_env)
        if not self._on_gpus and "OMP_NUM_THREADS" not in env and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self._devices)))
        return env

    def _run_on(self, job: Job, taken: list[int]) -> RunResult:
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
                extra_env=self._env(job),
                script=job.script,
                writable=job.writable,
                **run_options(job),
            )
        finally:
            self._give_back(taken)

    def _work(self, job: Job) -> RunResult:
        taken = self._take(job.gpus_per_run)
        if taken is None:
            raise TrainerError(
                f"a job asks for {job.gpus_per_run} devices; only {self.slots} are out of quarantine "
                f"({', '.join(self.quarantined)} quarantined)"
            )
        result = self._run_on(job, taken)
        if not self._on_gpus or len(taken) != 1:
            return result  # a multi-GPU failure cannot be pinned on one card
        first = self._devices[taken[0]]
        fault = device_fault(result)
        again = self._take(1, avoid=frozenset(taken)) if fault is not None and self._retry else None
        if again is None:  # not suspect, or no other healthy device to settle it on
            if fault is not None and self._retry:  # then the device itself is asked
                broken = probe_device(first)
                if broken is not None:  # the card's fault, not the code's: not a result of the child's
                    raise TrainerError(
                        f"GPU {first} failed a health check ({broken}) after a run crashed with a device "
                        f"error ({fault}); the run is not counted: check the card (`nvidia-smi`), or leave "
                        f"it out with --gpus"
                    )
            self.quarantine.observe(first, result)
            return result
        kept_log = _set_aside(result.log_path, first)
        retry = self._run_on(job, again)
        if retry.ok:  # the device, not the code: a strike
            self.quarantine.strike(first, fault)
            self.quarantine.observe(first, result)
        if retry.ok or device_fault(retry) is None:  # failing the same way twice is the code's doing
            self.quarantine.observe(self._devices[again[0]], retry)
        note = {"device": first, "status": result.status.value, "reason": fault, "log_path": kept_log}
        return dataclasses.replace(retry, extra={**retry.extra, "device_retry": note})

    def submit(self, job: Job) -> Future[RunResult]:
        if self._closed:
            raise TrainerError("this executor was shut down; create a new one to run more jobs")
        if not 1 <= job.gpus_per_run <= self.slots:
            raise TrainerError(f"a job asks for {job.gpus_per_run} devices; this executor has {self.slots}")
        return self._pool.submit(self._work, job)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def run_options(job: Job) -> dict:
    """The job's optional trainer.run arguments that it sets (the rest keep run's defaults)."""
    options = {"budget_unit": job.budget_unit, "window_limit": job.window_limit, "exit_grace": job.exit_grace}
    return {k: v for k, v in options.items() if v is not None}


def _set_aside(log_path: str | None, device: str) -> str | None:
    """Keep the first attempt's log next to the retry's (which is written to the same name)."""
    if not log_path or not Path(log_path).is_file():
        return log_path
    path = Path(log_path)
    kept = path.with_name(f"{path.stem}.gpu{device}{path.suffix}")
    path.replace(kept)
    return str(kept)
