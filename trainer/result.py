"""What one training run came to: a status, the metrics it reported, and how to reproduce it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run ended, as judged by the trainer (never as claimed by train.py)."""

    OK = "ok"  # trained within the harness's budget, handed over a causal model, scored finite
    CRASH = "crash"  # non-zero exit, or no result
    OOM = "oom"  # out of memory (CUDA or host), or killed by the kernel's OOM killer
    DIVERGED = "diverged"  # stopped itself on a NaN / exploding loss, or reported a non-finite val_bpb
    TIMEOUT = "timeout"  # still running at budget + allowance, killed
    INVALID = "invalid"  # a result that cannot be trusted: tampering, a leak, a late or missing model

    def is_success(self) -> bool:
        """The run produced a score that may be compared with others."""
        return self is Status.OK

    def is_finished(self) -> bool:
        """The script ran to its own end (exit 0) and was then judged: ok or invalid.

        False for runs that were cut short (crash, oom, diverged, timeout)."""
        return self in (Status.OK, Status.INVALID)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RunResult:
    """One run of one genome at one (depth, budget, seed), with its provenance.

    `metrics` holds what the harness measured (val_bpb from the evaluator; training_seconds,
    training_tokens and num_steps from the data server) and train.py's own summary numbers as
    notes (mfu_percent, peak_vram_mb, ...). Only a run with status ok has metrics that may be
    compared."""

    status: Status
    reason: str  # one line: why this status, e.g. "depth 3 reported, 4 asked"
    metrics: dict[str, Any]
    wall_seconds: float
    log_path: str | None
    error_tail: str  # last lines of the log when not ok, else ""
    returncode: int | None
    # provenance: what makes the number reproducible
    depth: int
    budget: float
    seed: int
    profile: str
    devices: tuple[str, ...]
    data_fingerprint: str | None
    torch_version: str | None
    gpu_name: str | None
    commit: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. log truncated)
    budget_unit: str = "seconds"  # what `budget` counts: "seconds" of training window or "tokens"
    isolation: str = ""  # how train.py was isolated ("bubblewrap 0.8.0"), or "none" (not safe)
    cpu_name: str | None = None  # the host's CPU model (a time budget compares CPU runs on one model)

    @property
    def val_bpb(self) -> float | None:
        value = self.metrics.get("val_bpb")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def ok(self) -> bool:
        return self.status.is_success()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (non-finite floats become strings so strict JSON can hold them)."""
        d = asdict(self)
        d["status"] = self.status.value
        d["devices"] = list(self.devices)
        d["metrics"] = {k: _jsonable(v) for k, v in self.metrics.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["status"] = Status(kwargs["status"])
        kwargs["devices"] = tuple(str(d) for d in kwargs.get("devices", ()))
        kwargs["metrics"] = {k: _unjson(v) for k, v in dict(kwargs.get("metrics") or {}).items()}
        kwargs.setdefault("extra", {})
        return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    return value


def _unjson(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value
