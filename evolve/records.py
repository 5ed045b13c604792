"""The store's records: the enums and frozen dataclasses that `evolve.store.Store` reads and writes.

Import them from `evolve.store` (which re-exports them) or from here; they hold no connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, NamedTuple

from prepare.profiles import budget_text

from .promotion import Score


class Status(str, Enum):
    """Where an individual is in its life: proposed -> queued -> running -> evaluated | failed."""

    PROPOSED = "proposed"
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATED = "evaluated"
    REJECTED = "rejected"  # the static guard or the novelty check refused it: never trained
    FAILED = "failed"  # trained, but no ok evaluation (crash, oom, diverged, timeout, invalid)

    def is_finished(self) -> bool:
        return self in (Status.EVALUATED, Status.REJECTED, Status.FAILED)


# evaluated -> queued is a re-evaluation with a new seed; running -> queued is a resume after a crash.
_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PROPOSED: frozenset({Status.QUEUED, Status.REJECTED, Status.FAILED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.REJECTED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.EVALUATED, Status.FAILED, Status.QUEUED}),
    Status.EVALUATED: frozenset({Status.QUEUED}),
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.REJECTED: frozenset(),
}


class Purpose(str, Enum):
    SEARCH = "search"
    REEVAL = "reeval"
    BASELINE = "baseline"
    VALIDATION = "validation"


# Evaluations at the search depth; validation runs at another depth and budget.
SEARCH_PURPOSES = (Purpose.SEARCH, Purpose.REEVAL, Purpose.BASELINE)


class LineageKind(str, Enum):
    MUTATION = "mutation"
    CROSSOVER = "crossover"
    MERGE = "merge"


@dataclass(frozen=True)
class Run:
    name: str
    settings: dict[str, Any]
    created: float
    strategy: str
    profile: str


@dataclass(frozen=True)
class Individual:
    """One individual as the store sees it (its code is the git commit)."""

    id: str
    run: str
    commit: str
    branch: str
    parents: tuple[str, ...]
    operator: str
    description: str
    island: int
    generation: int
    status: Status
    priority: int
    decision: str | None
    code_hash: str | None
    created: float
    started: float | None
    finished: float | None
    guard_reason: str | None
    origin: str | None = None  # a baseline's: the earlier run's individual its code was exported from


class ScoreKey(NamedTuple):
    """What makes two scores comparable: the depth, the budget and what it counts, and, for a time
    budget, the device model it ran on (in five minutes an H200 trains more than an A100; a token
    budget is the same work on any device). `device` is the GPU's name as torch reports it, the
    CPU's model name for a CPU run, "" under a token budget, or "" when it is not known (a run lost
    with its Ray node before it said, a CPU run recorded before the CPU's model was, a record made
    by hand): unknown admits any model.

    A run's scores at one depth are under one key: the key of its first ok evaluation there (the
    baseline's first seed, for the search depth); `Store.scores`, `values`, `leaderboard`, the
    judge (`evolve.judging.Evidence`) and so everything that ranks read only evaluations that key
    admits."""

    depth: int
    budget: float
    unit: str  # "seconds" or "tokens"
    device: str

    def admits(self, other: ScoreKey) -> bool:
        """True when a score under `other` may be compared with the scores under this key."""
        same = (self.depth, self.budget, self.unit) == (other.depth, other.budget, other.unit)
        return same and (self.device == other.device or "" in (self.device, other.device))

    def __str__(self) -> str:
        on = f" on {self.device}" if self.device else ""
        return f"depth {self.depth}, {budget_text(self.budget, self.unit)}{on}"

    @classmethod
    def of(cls, depth: int, budget: float, unit: str, gpu_name: str, cpu_name: str) -> ScoreKey:
        """The key of a run with these provenance fields (`Evaluation.key`; the store's tally reads
        the same columns)."""
        unit = unit or "seconds"
        device = ""
        if unit == "seconds":
            device = cpu_name if gpu_name == "cpu" else gpu_name
        return cls(int(depth), round(float(budget), 6), unit, device)


@dataclass(frozen=True)
class Evaluation:
    """One training run of one individual at one (depth, budget, seed), with its provenance."""

    individual: str
    depth: int
    budget: float
    seed: int
    profile: str
    status: str  # ok, crash, oom, diverged, timeout, invalid (the trainer's words)
    purpose: Purpose = Purpose.SEARCH
    val_bpb: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    device: str = ""
    wall_seconds: float | None = None
    training_seconds: float | None = None
    torch_version: str = ""
    gpu_name: str = ""
    log_path: str | None = None
    error_tail: str = ""
    reason: str = ""
    commit: str = ""  # the commit the trainer ran ("" in stores older than the column)
    created: float | None = None
    isolation: str = ""  # how train.py was isolated ("bubblewrap 0.8.0"), "none" when it was not
    budget_unit: str = "seconds"  # what `budget` counts: "seconds" or "tokens"
    cpu_name: str = ""  # the host's CPU model ("" in stores older than the column)
    id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.val_bpb is not None

    @property
    def key(self) -> ScoreKey:
        """What this score may be compared with (see ScoreKey)."""
        return ScoreKey.of(self.depth, self.budget, self.budget_unit, self.gpu_name, self.cpu_name)

    @classmethod
    def from_result(
        cls, individual: str, result: Mapping[str, Any], *, purpose: Purpose | str, device: str = ""
    ) -> Evaluation:
        """Build from the trainer's result as a plain dict (`RunResult.to_dict()`).

        Provenance (depth, budget, seed, profile, devices, data_fingerprint, torch_version,
        gpu_name, cpu_name) is read from the top level or from a nested `provenance` dict."""
        prov = {**result, **dict(result.get("provenance") or {})}
        text = lambda key: str(prov.get(key) or "")
        metrics = dict(result.get("metrics") or {})
        status = result["status"]
        status = str(getattr(status, "value", status))
        devices = prov.get("devices")
        if not device and devices:
            device = devices if isinstance(devices, str) else ",".join(str(d) for d in devices)
        val_bpb = metrics.get("val_bpb") if status == "ok" else None
        training_seconds = metrics.get("training_seconds")
        return cls(
            individual=individual,
            depth=int(prov.get("depth") or metrics.get("depth") or 0),
            budget=float(prov.get("budget") or 0.0),
            seed=int(prov.get("seed") or 0),
            profile=text("profile"),
            status=status,
            purpose=Purpose(purpose),
            val_bpb=None if val_bpb is None else float(val_bpb),
            metrics=metrics,
            data_fingerprint=text("data_fingerprint"),
            device=device,
            wall_seconds=result.get("wall_seconds"),
            training_seconds=training_seconds if isinstance(training_seconds, (int, float)) else None,
            torch_version=text("torch_version"),
            gpu_name=text("gpu_name"),
            log_path=None if result.get("log_path") is None else str(result["log_path"]),
            error_tail=text("error_tail"),
            reason=text("reason"),
            commit=text("commit"),
            isolation=text("isolation"),
            budget_unit=text("budget_unit") or "seconds",
            cpu_name=text("cpu_name"),
        )


# The evaluations table has one column per field (`commit` is `commit_sha`, as for individuals);
# `id` is assigned by SQLite.
_EVALUATION_COLUMNS = tuple(f.name for f in fields(Evaluation) if f.name != "id")
_COLUMN_NAMES = {"commit": "commit_sha"}


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    run: str | None
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class LLMCall:
    """One request to the LLM endpoint: what it was for, what it cost, and what became of its answer.

    `ok`: the endpoint answered (a failed attempt, retried or not, is a row with ok False and its
    error). `purpose`: mutation, crossover, repair (the second answer asked for in the same
    conversation) or insights. `outcome`: usable (applied as it was), repaired (not usable, `why`
    says why, but the repair round that followed made a child), unusable (no child came of it;
    `why`). `individual`: the child it was for (None for insights and for failed proposals)."""

    id: int
    time: float
    run: str | None
    model: str
    operator: str
    purpose: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    ok: bool
    error: str
    outcome: str
    why: str
    individual: str | None


@dataclass(frozen=True)
class Insight:
    """One version of a run's meta-insights: the notes shown to later prompts, and what was checked.

    `items`: the bullets that passed the check, each {"kind": helped|hurt|open, "text", "cites"};
    `dropped`: the ones refused, each {"line", "why"}; `children`: finished children it was
    written from; `call`: the llm_calls row that wrote it."""

    version: int
    time: float
    run: str | None
    text: str
    items: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    children: int
    call: int | None


@dataclass(frozen=True)
class Ranked:
    """A leaderboard line: an individual and its score at the asked depth."""

    individual: Individual
    score: Score


@dataclass(frozen=True)
class DiskUse:
    db_bytes: int  # the database with its WAL and shared-memory files
    log_bytes: int  # the training logs the evaluations point to, where they still exist
    log_files: int

    @property
    def total_bytes(self) -> int:
        return self.db_bytes + self.log_bytes


def _individual(r: sqlite3.Row) -> Individual:
    row = dict(r)
    row.pop("rev", None)  # the change counter of evolve.snapshots, not a property of the individual
    row["commit"] = row.pop("commit_sha")
    row["parents"] = tuple(json.loads(row["parents"]))
    row["status"] = Status(row["status"])
    return Individual(**row)


def _evaluation(r: sqlite3.Row) -> Evaluation:
    row = dict(r)
    row["purpose"] = Purpose(row["purpose"])
    row["metrics"] = json.loads(row["metrics"])
    row["commit"] = row.pop("commit_sha", None) or ""
    return Evaluation(**row)


def _llm_call(r: sqlite3.Row) -> LLMCall:
    row = dict(r)
    row["ok"] = bool(row["ok"])
    return LLMCall(**row)


def _insight(r: sqlite3.Row) -> Insight:
    row = dict(r)
    row.pop("id", None)
    row["items"] = json.loads(row["items"] or "[]")
    row["dropped"] = json.loads(row["dropped"] or "[]")
    return Insight(**row)
