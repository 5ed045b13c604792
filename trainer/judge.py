"""Judging a finished run: from exit code, log tail and result file to a Status and a reason.

The trainer, not `train.py`, is the judge. A result counts only when it was signed by
`prepare.report` with this run's key, says it ran the depth / budget / seed / profile that were
asked for, stayed inside the budget, agrees with the summary block printed in the log, and the
run left prepare's code and the data untouched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepare.contract import EXIT_DIVERGED, verify

from .process import Outcome
from .result import Status

# Slack on training_seconds: 2% of the budget plus a little for the clock read after the last step.
BUDGET_SLACK = 1.02
BUDGET_EPSILON = 0.25

_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|MemoryError|std::bad_alloc|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDA error: out of memory"
)
_DIVERGED_LINE = re.compile(r"^DIVERGED: ", re.MULTILINE)
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b.*$", re.MULTILINE)
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$")


@dataclass(frozen=True)
class Expected:
    """What the run was asked to do, which its result must match."""

    depth: int
    budget: float
    seed: int
    profile: str
    world_size: int
    key: bytes


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    metrics: dict[str, Any]


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


def _same_value(printed: str, stored: Any) -> bool:
    if isinstance(stored, bool) or not isinstance(stored, (int, float)):
        return printed == str(stored)
    try:
        value = float(printed)
    except ValueError:
        return False
    stored = float(stored)
    if math.isnan(stored) or math.isnan(value):
        return math.isnan(stored) and math.isnan(value)
    # report prints 6 decimals below 1e6 and 1 decimal above
    return math.isclose(value, stored, rel_tol=1e-6, abs_tol=0.06 if abs(stored) >= 1e6 else 1e-5)


def last_error(text: str, width: int = 200) -> str:
    """The last `SomeError: message` line of a traceback in `text`, shortened; '' if none."""
    found = _ERROR_LINE.findall(text)
    return found[-1].strip()[:width] if found else ""


def tail_lines(text: str, n: int = 50) -> str:
    return "\n".join(text.splitlines()[-n:])


def _is_oom(outcome: Outcome) -> bool:
    if _OOM.search(outcome.tail):
        return True
    # SIGKILL we did not send: the kernel's OOM killer is by far the likeliest sender
    return outcome.returncode == -9 and not outcome.killed_by_us


def _load(result_path: Path) -> tuple[dict | None, str]:
    if not result_path.exists():
        return None, "exited 0 but wrote no result file (did train.py call prepare.report?)"
    try:
        document = json.loads(result_path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"result file is not valid JSON: {exc}"
    if not isinstance(document, dict):
        return None, "result file is not a JSON object"
    return document, ""


def _mismatch(document: dict, expected: Expected) -> str:
    """The first way the result disagrees with what was asked, or ''."""
    config = document.get("config")
    if not isinstance(config, dict):
        return "result has no config block"
    checks = (
        ("depth", document.get("depth"), expected.depth),
        ("depth", config.get("depth"), expected.depth),
        ("seed", config.get("seed"), expected.seed),
        ("profile", config.get("profile"), expected.profile),
        ("world size", config.get("world_size", 1), expected.world_size),
    )
    for name, got, want in checks:
        if got != want or isinstance(got, bool):
            return f"{name} {got} reported, {want} asked"
    budget = config.get("time_budget")
    if not isinstance(budget, (int, float)) or not math.isclose(budget, expected.budget, rel_tol=1e-9):
        return f"budget {budget} reported, {expected.budget:g} asked"
    return ""


def judge(outcome: Outcome, result_path: Path, expected: Expected, tampering: str = "") -> Verdict:
    """Classify one run. `tampering` names what changed in prepare or the data ('' if nothing)."""
    if tampering:
        return Verdict(Status.INVALID, tampering, {})
    if outcome.timed_out:
        return Verdict(Status.TIMEOUT, f"still running after {outcome.wall_seconds:.1f} s; killed", {})
    rc = outcome.returncode
    if rc != 0:
        if rc == EXIT_DIVERGED or _DIVERGED_LINE.search(outcome.tail):
            return Verdict(Status.DIVERGED, "the run stopped itself on a NaN or exploding loss", {})
        if _is_oom(outcome):
            how = "killed by SIGKILL (OOM killer?)" if rc == -9 else "out of memory"
            return Verdict(Status.OOM, how, {})
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        error = last_error(outcome.tail)
        return Verdict(Status.CRASH, f"{how}: {error}" if error else how, {})

    document, problem = _load(result_path)
    if document is None:
        return Verdict(Status.INVALID, problem, {})
    if not verify(document, expected.key):
        return Verdict(Status.INVALID, "result file was not signed by prepare.report for this run", {})
    metrics = {k: v for k, v in document.items() if k not in ("signature", "config")}

    mismatch = _mismatch(document, expected)
    if mismatch:
        return Verdict(Status.INVALID, mismatch, metrics)
    bpb = metrics.get("val_bpb")
    if isinstance(bpb, bool) or not isinstance(bpb, (int, float)):
        return Verdict(Status.INVALID, "result has no numeric val_bpb", metrics)
    seconds = metrics.get("training_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return Verdict(Status.INVALID, "result has no numeric training_seconds", metrics)
    limit = expected.budget * BUDGET_SLACK + BUDGET_EPSILON
    if not seconds <= limit:  # also catches NaN
        return Verdict(
            Status.INVALID, f"training_seconds {seconds:.2f} over the budget of {expected.budget:g}", metrics
        )

    summary = parse_summary(outcome.tail)
    if summary is None or "val_bpb" not in summary:
        return Verdict(Status.INVALID, "no summary block with val_bpb at the end of the log", metrics)
    for key, printed in summary.items():
        if key in metrics and not _same_value(printed, metrics[key]):
            return Verdict(
                Status.INVALID, f"log says {key}: {printed} but the result file says {metrics[key]}", metrics
            )
    if not math.isfinite(bpb):
        return Verdict(Status.DIVERGED, f"val_bpb is {bpb}", metrics)
    return Verdict(Status.OK, f"val_bpb {bpb:.6f}", metrics)
