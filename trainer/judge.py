"""Judging a finished run: from what the OS, the data server and the evaluator saw to a Status.

The trainer, not `train.py`, is the judge, and it believes only what it measured: how the process
ended (exit code, signals, the log tail for OOM and tripwire lines), the data server's ledger (the
training window, the tokens served, when the model was handed over) and the evaluator's score of
the handed-over model. What train.py printed in its summary block is kept as the run's own notes
(`mfu_percent`, `peak_vram_mb`, ...) and never decides anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from prepare.contract import EXIT_DIVERGED
from prepare.sandbox import MARKER, SELF_KILL_MARKER

from .dataserver import Ledger
from .process import Outcome
from .result import Status

_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|MemoryError|std::bad_alloc|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDA error: out of memory|DefaultCPUAllocator: can't allocate memory"
)
_DIVERGED_LINE = re.compile(r"^DIVERGED: ", re.MULTILINE)
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b.*$", re.MULTILINE)
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$")
# Measured by the harness; a summary line of train.py's with one of these names is ignored.
HARNESS_KEYS = frozenset({
    "val_bpb", "training_seconds", "training_tokens", "total_tokens_M", "num_steps", "num_params_M",
    "startup_seconds", "handover_seconds", "total_seconds",
})  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def parse_summary(text: str) -> dict[str, str] | None:
    """The last `---` block of `text` as {key: raw value}; None when there is none."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return None
    block: dict[str, str] = {}
    for line in lines[starts[-1] + 1 :]:
        match = _SUMMARY_LINE.match(line.strip())
        if match:
            block.setdefault(match.group(1), match.group(2).strip())
    return block


def last_error(text: str, width: int = 200) -> str:
    """The last `SomeError: message` line of a traceback in `text`, shortened; '' if none."""
    found = _ERROR_LINE.findall(text)
    return found[-1].strip()[:width] if found else ""


def tail_lines(text: str, n: int = 50) -> str:
    return "\n".join(text.splitlines()[-n:])


def _sandbox_line(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        if line.startswith(MARKER):
            return line[len(MARKER) :].strip()[:300]
    return ""


def _notes(tail: str) -> dict[str, Any]:
    """train.py's own summary numbers (for humans and prompts), never the harness's keys."""
    notes: dict[str, Any] = {}
    for key, raw in (parse_summary(tail) or {}).items():
        if key in HARNESS_KEYS:
            continue
        try:
            value: Any = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            notes[key] = int(value) if value.is_integer() and "." not in raw else value
    return notes


def _measured(led: Ledger, outcome: Outcome) -> dict[str, Any]:
    seconds = led.training_seconds
    out: dict[str, Any] = {
        "training_seconds": round(seconds, 3) if seconds is not None else None,
        "training_tokens": led.tokens,
        "total_tokens_M": led.tokens / 1e6,
        "num_steps": led.steps,
        "total_seconds": round(outcome.wall_seconds, 3),
    }
    if led.handover_seconds is not None:
        out["handover_seconds"] = round(led.handover_seconds, 3)
    return {k: v for k, v in out.items() if v is not None}


def judge(outcome: Outcome, led: Ledger, score: dict | None, tampering: str = "") -> Verdict:
    """Classify one run. `score` is the evaluator's answer (None: it was not asked to score)."""
    notes = _notes(outcome.tail)
    measured = _measured(led, outcome)
    extra: dict[str, Any] = {"notes": notes} if notes else {}
    if tampering:
        return Verdict(Status.INVALID, tampering, {}, extra)
    denied = _sandbox_line(outcome.tail) or (led.denied[0] if led.denied else "")
    if denied:
        return Verdict(Status.INVALID, f"sandbox: train.py tried to {denied}", {}, extra)
    if led.problems:
        return Verdict(Status.INVALID, led.problems[0], measured, extra)
    if outcome.timed_out:
        return Verdict(Status.TIMEOUT, f"still running after {outcome.wall_seconds:.1f} s; killed", {}, extra)
    rc = outcome.returncode
    # Once the weights are in, nothing the process does counts, its exit status neither (it is
    # stopped a second later anyway): the model is judged, never a race against that second.
    if rc != 0 and outcome.stopped != "exit" and led.weights_at is None:
        if rc == EXIT_DIVERGED or _DIVERGED_LINE.search(outcome.tail):
            return Verdict(
                Status.DIVERGED, "the run stopped itself on a NaN or exploding loss", measured, extra
            )
        if rc == -9 and SELF_KILL_MARKER in outcome.tail:
            return Verdict(Status.CRASH, "train.py killed itself with SIGKILL", {}, extra)
        if _OOM.search(outcome.tail) or (rc == -9 and not outcome.killed_by_us):
            how = (
                "killed by SIGKILL (OOM killer?)"
                if rc == -9 and not _OOM.search(outcome.tail)
                else "out of memory"
            )
            return Verdict(Status.OOM, how, {}, extra)
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        error = last_error(outcome.tail)
        return Verdict(Status.CRASH, f"{how}: {error}" if error else how, {}, extra)
    if led.failed:
        return Verdict(Status.CRASH, f"the model could not be handed over: {led.failed[0]}", measured, extra)
    if led.graph_at is None or led.window_start is None:
        return Verdict(
            Status.INVALID,
            "no model was handed over: train.py must train on prepare.train_loader(model, ...) (docs/SECURITY.md)",
            measured,
            extra,
        )
    if led.end_sent is None:
        return Verdict(
            Status.INVALID,
            "train.py stopped before its budget was spent and handed over no weights",
            measured,
            extra,
        )
    if led.weights_at is None or score is None:
        return Verdict(
            Status.INVALID, "the data ended but the model's weights never arrived", measured, extra
        )
    status = score.get("status")
    if status != "ok":
        kinds = {"invalid": Status.INVALID, "oom": Status.OOM, "timeout": Status.TIMEOUT}
        return Verdict(
            kinds.get(status, Status.CRASH), f"scoring: {score.get('reason', status)}", measured, extra
        )
    bpb = score.get("val_bpb")
    if not isinstance(bpb, (int, float)) or isinstance(bpb, bool) or not math.isfinite(bpb):
        return Verdict(Status.DIVERGED, f"val_bpb is {bpb}", measured, extra)
    if score.get("leaks_future"):
        return Verdict(
            Status.INVALID,
            "the model's predictions change with later tokens: it reads the answer (not causal; "
            f"largest change {score.get('probe_max_diff')} nats over {score.get('probes')} probes)",
            measured,
            extra,
        )
    metrics = {**notes, **measured, "val_bpb": float(bpb)}
    if isinstance(score.get("num_params"), int):
        metrics["num_params_M"] = score["num_params"] / 1e6
    extra.update(
        eval_num_params=score.get("num_params"),
        eval_probes=score.get("probes"),
        eval_probe_max_diff=score.get("probe_max_diff"),
        eval_seconds=score.get("score_seconds"),
    )
    return Verdict(Status.OK, f"val_bpb {metrics['val_bpb']:.6f}", metrics, extra)
