"""Quarantine of failing GPUs: device-fault detection, retry on another GPU, strikes, events.

There is no GPU here, so these tests inject a runner into LocalExecutor (its `runner=` argument)
that plays a host whose GPU "1" is broken: runs placed there crash with a device error, runs
elsewhere pass. This is the one place a fake runner stands in for the real trainer; the executor's
scheduling, retries and bookkeeping around it are the real ones.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from trainer import Job, LocalExecutor, RunResult, Status, TrainerError
from trainer.quarantine import Quarantine, device_fault

ECC = "RuntimeError: CUDA error: uncorrectable ECC error encountered"


def result(status: Status, tail: str = "", devices=("0",), log_path: str | None = None) -> RunResult:
    return RunResult(
        status=status, reason=status.value, metrics={"val_bpb": 1.0} if status is Status.OK else {},
        wall_seconds=0.01, log_path=log_path, error_tail=tail, returncode=0 if status is Status.OK else 1,
        depth=2, budget=1.0, seed=0, profile="tiny", devices=tuple(devices), data_fingerprint=None,
        torch_version=None, gpu_name="cuda", commit=None,
    )  # fmt: skip


class Host:
    """A runner for LocalExecutor: `broken` devices crash with `tail`, the rest pass."""

    def __init__(self, broken=("1",), tail=ECC, code_tail: str | None = None, sleep: float = 0.02):
        self.broken, self.tail, self.code_tail, self.sleep = set(broken), tail, code_tail, sleep
        self.calls: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, worktree, *, seed, devices, log_dir=None, **_) -> RunResult:
        with self.lock:
            self.calls.append((seed, ",".join(devices)))
        time.sleep(self.sleep)
        log_path = None
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            log_path = str(Path(log_dir) / "run.log")
            Path(log_path).write_text(f"ran on {','.join(devices)}\n")
        if self.code_tail is not None:  # the child's own bug: it fails on every device
            return result(Status.CRASH, self.code_tail, devices, log_path)
        if set(devices) & self.broken:
            return result(Status.CRASH, f"Traceback (most recent call last):\n{self.tail}", devices, log_path)
        return result(Status.OK, "", devices, log_path)


def jobs(tmp_path, n: int, **fields) -> list[Job]:
    return [Job(worktree=tmp_path, depth=2, budget=1.0, seed=i, log_dir=tmp_path / f"log{i}", **fields)
            for i in range(n)]  # fmt: skip


def run_all(ex: LocalExecutor, js: list[Job]) -> list[RunResult]:
    return [f.result(timeout=30) for f in [ex.submit(j) for j in js]]


@pytest.mark.parametrize(
    "tail",
    [
        ECC,
        "RuntimeError: CUDA error: unspecified launch failure",
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
        "RuntimeError: No CUDA GPUs are available\nCUDA driver initialization failed",
        "RuntimeError: CUDA error: no CUDA-capable device is detected",
        "RuntimeError: CUDA error: cudaErrorLaunchFailure",
        "NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",
    ],
)
def test_device_errors_are_suspect(tail):
    assert device_fault(result(Status.CRASH, f"step 10\n{tail}")) is not None


@pytest.mark.parametrize(
    "status, tail",
    [
        (Status.CRASH, "RuntimeError: CUDA error: device-side assert triggered"),
        (Status.CRASH, "../Indexing.cu:1237: indexSelectSmallIndex: Assertion `srcIndex < srcSelectDimSize` failed.\n"
                       "RuntimeError: CUDA error: an illegal memory access was encountered"),
        (Status.CRASH, "NameError: name 'x' is not defined"),
        (Status.OOM, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
        (Status.TIMEOUT, "CUDA error: unspecified launch failure"),
        (Status.OK, ""),
    ],
)  # fmt: skip
def test_code_faults_and_other_statuses_are_not_suspect(status, tail):
    assert device_fault(result(status, tail)) is None


def test_a_broken_gpu_is_quarantined_after_its_strikes_and_its_jobs_pass_elsewhere(tmp_path):
    host, events = Host(broken=("1",)), []
    with LocalExecutor(
        (0, 1, 2), runner=host, quarantine_after=2, on_event=lambda k, p: events.append((k, p))
    ) as ex:
        results = run_all(ex, jobs(tmp_path, 12))
        assert ex.quarantined.keys() == {"1"} and ex.slots == 2
        later = len(host.calls)
        run_all(ex, jobs(tmp_path / "later", 6))
    assert all(r.status is Status.OK for r in results)
    assert all("1" not in d for _, d in host.calls[later:])  # no job goes to a quarantined GPU
    retried = [r for r in results if "device_retry" in r.extra]
    assert retried and all(r.extra["device_retry"]["device"] == "1" and r.devices != ("1",) for r in retried)
    assert all(Path(r.extra["device_retry"]["log_path"]).read_text() == "ran on 1\n" for r in retried)
    assert all(Path(r.log_path).read_text() != "ran on 1\n" for r in retried)  # the retry's own log
    kinds = [k for k, _ in events]
    assert kinds.count("device_quarantined") == 1 and kinds.count("device_strike") >= 1
    assert dict(events[kinds.index("device_quarantined")][1])["device"] == "1"


def test_a_child_that_fails_everywhere_is_retried_once_and_strikes_no_gpu(tmp_path):
    tail = "RuntimeError: CUDA error: an illegal memory access was encountered"
    host, events = Host(broken=(), code_tail=tail), []
    with LocalExecutor((0, 1), runner=host, quarantine_after=1, on_event=lambda k, p: events.append(k)) as ex:
        (only,) = run_all(ex, jobs(tmp_path, 1))
    assert only.status is Status.CRASH and only.extra["device_retry"]["status"] == "crash"
    assert len(host.calls) == 2 and host.calls[0][1] != host.calls[1][1]  # once more, on the other GPU
    assert not ex.quarantined and events == []


def test_code_faults_are_not_retried(tmp_path):
    host = Host(broken=(), code_tail="RuntimeError: CUDA error: device-side assert triggered")
    with LocalExecutor((0, 1), runner=host, quarantine_after=1) as ex:
        (only,) = run_all(ex, jobs(tmp_path, 1))
    assert only.status is Status.CRASH and len(host.calls) == 1 and not ex.quarantined


def test_a_gpu_that_keeps_failing_while_others_pass_is_quarantined_without_retries(tmp_path):
    host = Host(broken=("0",))
    with LocalExecutor((0, 1), runner=host, quarantine_after=3, retry_device_faults=False) as ex:
        results = run_all(ex, jobs(tmp_path, 16))
        assert ex.quarantined.keys() == {"0"}
        assert "in a row" in ex.quarantined["0"]
    assert any(r.status is Status.CRASH for r in results)  # without retries, the failures stand


def test_the_last_healthy_gpu_is_never_quarantined():
    q = Quarantine(["0", "1"], after=1)
    assert q.strike("0", ECC)
    assert not q.strike("1", ECC)  # a host with no GPU left would wait forever instead of failing
    assert q.quarantined.keys() == {"0"} and q.healthy() == ("1",)


def test_cpu_slots_are_never_retried_or_quarantined(tmp_path):
    host = Host(broken=("cpu",))
    with LocalExecutor(("cpu", "cpu"), runner=host, quarantine_after=1) as ex:
        results = run_all(ex, jobs(tmp_path, 3))
    assert len(host.calls) == 3 and all(r.status is Status.CRASH for r in results) and not ex.quarantined


def test_a_multi_gpu_job_fails_clearly_once_too_few_gpus_are_left(tmp_path):
    host = Host(broken=("2",))
    with LocalExecutor((0, 1, 2), runner=host, quarantine_after=1) as ex:
        run_all(ex, jobs(tmp_path, 6))
        assert ex.quarantined.keys() == {"2"}
        (pair,) = run_all(ex, jobs(tmp_path / "pair", 1, gpus_per_run=2))
        assert pair.status is Status.OK and set(pair.devices) == {"0", "1"}
        with pytest.raises(TrainerError, match="asks for 3 devices"):
            ex.submit(jobs(tmp_path / "big", 1, gpus_per_run=3)[0])


def test_strikes_accumulate_per_device():
    seen = []
    q = Quarantine(["0", "1", "2"], after=2, on_event=lambda k, p: seen.append((k, p["device"])))
    assert not q.strike("1", ECC)
    assert q.strikes("1") == 1 and not q.quarantined
    assert q.strike("1", ECC)
    assert q.quarantined.keys() == {"1"} and q.healthy() == ("0", "2")
    assert seen == [("device_strike", "1"), ("device_strike", "1"), ("device_quarantined", "1")]


def test_the_health_check_fails_on_a_card_that_cannot_compute():
    # This host's torch has no CUDA (CI: a CPU wheel); on a GPU host, GPU 0 passes it.
    import torch

    from trainer.quarantine import probe_device

    answer = probe_device("0")
    if torch.cuda.is_available():
        assert answer is None
    else:
        assert answer is not None and ("CUDA" in answer or "cuda" in answer), answer


def test_a_device_fault_on_the_only_gpu_asks_the_card_and_a_failing_card_is_not_the_child_s_fault(tmp_path):
    import torch

    host = Host(broken=("0",))
    with LocalExecutor((0,), runner=host) as ex:
        future = ex.submit(jobs(tmp_path, 1)[0])
        if torch.cuda.is_available():  # the card passes its health check: the crash stands
            assert future.result(timeout=300).status is Status.CRASH
        else:  # no card answers here: the run is the machine's problem, not a result
            with pytest.raises(TrainerError, match=r"GPU 0 failed a health check .* the run is not counted"):
                future.result(timeout=300)
    assert len(host.calls) == 1 and not ex.quarantined


def test_a_code_fault_on_the_only_gpu_does_not_ask_the_card(tmp_path):
    host = Host(broken=(), code_tail="RuntimeError: CUDA error: device-side assert triggered")
    with LocalExecutor((0,), runner=host) as ex:
        (only,) = run_all(ex, jobs(tmp_path, 1))
    assert only.status is Status.CRASH  # no health check: a CPU host would have failed it
