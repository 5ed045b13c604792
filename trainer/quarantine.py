"""Device faults and quarantine: a GPU whose runs keep failing for reasons outside the code.

A crash whose log blames the device (an ECC error, a lost GPU, a driver or NCCL failure) is only a
suspicion: a bad child can print "CUDA error" too. The executor settles it by running the same job
once more on another device. If it passes there, the first device gets a strike; after `after`
strikes it is taken out of rotation. A device whose runs fail with device errors `after` times in a
row while other devices pass is quarantined too (this catches what a retry cannot settle, e.g. when
no other device was free to retry on). The last healthy device is never quarantined: a host with
no device left would wait forever instead of failing visibly. Where there is no other healthy
device to retry on (a one-GPU host), the device itself is asked: a health check in a process of
its own (`probe_device`); a card that fails it stops the run with a TrainerError that says so (the
crash is not counted against the child), one that passes leaves the crash as the child's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .result import RunResult, Status

# Lines that blame the GPU, its driver or the interconnect rather than the code.
_DEVICE_FAULT = re.compile(
    r"CUDA error"
    r"|CUDA driver"
    r"|cudaError\w*"
    r"|CUDA_ERROR_\w+"
    r"|NCCL error|nccl(?:SystemError|InternalError|UnhandledCudaError|RemoteError)"
    r"|\bXid\b"
    r"|\bECC\b"
    r"|no CUDA-capable device"
    r"|CUDA-capable device\(s\) is/are busy or unavailable"
    r"|(?:fallen|fell) off the bus|GPU is lost"
    r"|Failed to initialize NVML|NVML_ERROR"
    r"|(?:CUBLAS|CUDNN)_STATUS_(?:EXECUTION_FAILED|INTERNAL_ERROR|NOT_INITIALIZED)",
    re.IGNORECASE,
)

# The code's own fault even though CUDA reports it: an index out of range trips a device-side
# assert, a bad launch configuration is the kernel's, an arch mismatch fails on every card alike.
_CODE_FAULT = re.compile(
    r"device-side assert"
    r"|Assertion `.*` failed"
    r"|out of memory|CUDA_ERROR_OUT_OF_MEMORY"
    r"|CUDA error: (?:invalid argument|misaligned address|invalid configuration argument"
    r"|invalid device function|no kernel image is available|operation not supported)",
    re.IGNORECASE,
)

# A health check of one GPU, in a process of its own (never train.py's): CUDA starts, and a matrix
# product on the card gives the right answer.
PROBE = (
    "import torch\n"
    "x = torch.ones(512, 512, device='cuda')\n"
    "total = float((x @ x).sum())\n"
    "torch.cuda.synchronize()\n"
    "assert total == 512.0 ** 3, f'the card computed {total}, not {512.0 ** 3}'\n"
)
PROBE_TIMEOUT = 180.0

EventHook = Callable[[str, dict], None]
STRIKE_EVENT = "device_strike"
QUARANTINE_EVENT = "device_quarantined"


def device_fault(result: RunResult) -> str | None:
    """The log line that blames the device when `result` is a crash that looks like a device fault.

    Only crashes count: an OOM, a divergence or a timeout is the child's behaviour, and a run that
    finished was not stopped by its device."""
    if result.status is not Status.CRASH:
        return None
    text = result.error_tail or ""
    if _CODE_FAULT.search(text):
        return None
    for line in reversed(text.splitlines()):
        if _DEVICE_FAULT.search(line):
            return line.strip()[:300]
    return None


def probe_device(index: str, python: str = sys.executable, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when GPU `index` passes the health check (`PROBE`), else why it failed, in one line."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}
    try:
        done = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the health check did not finish in {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"the health check exited with {done.returncode}"


@dataclass
class _Record:
    strikes: int = 0
    streak: int = 0  # device faults in a row on this device
    passed_elsewhere: int = 0  # ok runs on other devices since the streak began
    reasons: list[str] = field(default_factory=list)


class Quarantine:
    """Strikes and quarantine for a fixed set of devices; safe to call from many threads."""

    def __init__(self, devices: Iterable[str], *, after: int = 3, on_event: EventHook | None = None):
        if after < 1:
            raise ValueError("quarantine needs at least one strike")
        self.after = after
        self.on_event = on_event
        self._records = {str(d): _Record() for d in devices}
        self._out: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def quarantined(self) -> dict[str, str]:
        """Device -> why it was taken out of rotation."""
        with self._lock:
            return dict(self._out)

    def healthy(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(d for d in self._records if d not in self._out)

    def strikes(self, device: str) -> int:
        with self._lock:
            return self._records[device].strikes

    def observe(self, device: str, result: RunResult) -> bool:
        """Count one single-device run; True when it put `device` in quarantine."""
        fault = device_fault(result)
        events: list[tuple[str, dict]] = []
        with self._lock:
            rec = self._records[device]
            if fault is None:
                rec.streak, rec.passed_elsewhere = 0, 0
                if result.ok:
                    for other, r in self._records.items():
                        if other != device and r.streak:
                            r.passed_elsewhere += 1
            else:
                rec.streak += 1
            done = False
            for other, r in self._records.items():
                if r.streak >= self.after and r.passed_elsewhere and other not in self._out:
                    why = (
                        f"{r.streak} device errors in a row while other devices passed (last: {fault or '?'})"
                    )
                    done |= self._quarantine(other, why, events) and other == device
        self._emit(events)
        return done

    def strike(self, device: str, reason: str) -> bool:
        """The same job failed on `device` and passed elsewhere; True when `device` is now quarantined."""
        events: list[tuple[str, dict]] = []
        with self._lock:
            rec = self._records[device]
            rec.strikes += 1
            rec.reasons.append(reason)
            events.append((STRIKE_EVENT, {"device": device, "strikes": rec.strikes, "of": self.after,
                                          "reason": reason}))  # fmt: skip
            done = False
            if rec.strikes >= self.after and device not in self._out:
                why = f"{rec.strikes} runs failed here and passed on another device (last: {reason})"
                done = self._quarantine(device, why, events)
        self._emit(events)
        return done

    def _quarantine(self, device: str, why: str, events: list[tuple[str, dict]]) -> bool:
        if sum(1 for d in self._records if d not in self._out) <= 1:
            return False  # keep the last one: failing runs are visible, a stalled host is not
        self._out[device] = why
        events.append((QUARANTINE_EVENT, {"device": device, "reason": why}))
        return True

    def _emit(self, events: list[tuple[str, dict]]) -> None:
        if self.on_event is None:
            return
        for kind, payload in events:
            try:
                self.on_event(kind, payload)
            except Exception:  # a broken display must not take a training slot down with it
                pass
