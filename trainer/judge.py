"""Judging a finished run: from exit code, log tail and result file to a Status and a reason.

The trainer, not `train.py`, is the judge. A result counts only when it was signed by
`prepare.report` with this run's key, says it ran the depth / budget / seed / profile that were
asked for, stayed inside the budget, reports the one number `prepare.evaluate_bpb` computed (on
the profile's full validation set, with a model that does not read later tokens), agrees with
the summary block printed in the log, tripped no sandbox wire, and the run left prepare's code
and the data untouched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepare.contract import EXIT_DIVERGED, verify
from prepare.sandbox import MARKER, SELF_KILL_MARKER

from .process import Outcome
from .result import Status

# Slack on training_seconds: 2% of the budget plus a little for the clock read after the last step,
# plus one average step (at most a quarter of the budget): train.py decides to take its last step
# from the time of the one before, and on a loaded CPU a step can take twice as long as the last.
BUDGET_SLACK = 1.02
BUDGET_EPSILON = 0.25
LAST_STEP_SHARE = 0.25
# Slack when comparing a reported duration with what prepare or the trainer measured.
CLOCK_SLACK = 1.0

_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|MemoryError|std::bad_alloc|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDA error: out of memory|DefaultCPUAllocator: can't allocate memory"
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
    eval_tokens: int | None = None  # None: not checked (callers that judge by hand)
    seq_len: int | None = None
    data_dir: str | None = None


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # what prepare measured (harness block)


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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _harness_problem(harness: dict, metrics: dict, expected: Expected, wall: float) -> str:
    """The first way the run's own report disagrees with what prepare measured, or ''."""
    denied = harness.get("denied")
    if denied:
        return f"sandbox: train.py tried to {denied[0]}"
    evaluations = harness.get("evaluations")
    if not isinstance(evaluations, list) or not evaluations:
        return "val_bpb was not computed by prepare.evaluate_bpb"
    if len(evaluations) > 1:
        return (
            f"prepare.evaluate_bpb was called {len(evaluations)} times; a run scores its one model once "
            "(picking among models by their validation score fits the test set)"
        )
    scored = evaluations[0] if isinstance(evaluations[0], dict) else {}
    bpb, measured = _number(metrics.get("val_bpb")), _number(scored.get("val_bpb"))
    if measured is None or not (bpb == measured or (math.isnan(bpb) and math.isnan(measured))):
        return f"val_bpb {metrics.get('val_bpb')} reported, but prepare.evaluate_bpb returned {scored.get('val_bpb')}"
    if expected.eval_tokens is not None and scored.get("eval_tokens") != expected.eval_tokens:
        return f"scored on {scored.get('eval_tokens')} validation tokens, not the profile's {expected.eval_tokens}"
    if expected.seq_len is not None and scored.get("seq_len") != expected.seq_len:
        return f"scored with rows of {scored.get('seq_len')} tokens, not the profile's {expected.seq_len}"
    if expected.data_dir is not None and scored.get("data_dir") != expected.data_dir:
        return f"scored on the data at {scored.get('data_dir')}, not the run's {expected.data_dir}"
    if scored.get("consistent") is not True:
        return "the metric's own arithmetic disagrees with itself: torch functions it uses were replaced"
    if scored.get("leaks_future") is not False:
        return "the model's predictions change with later tokens: it reads the answer (not causal)"
    elapsed = _number(harness.get("elapsed_seconds"))
    total, seconds = _number(metrics.get("total_seconds")), _number(metrics.get("training_seconds"))
    if elapsed is None or elapsed > wall + CLOCK_SLACK:
        return f"prepare measured {elapsed} s of run time, but the process ran {wall:.1f} s"
    if seconds is not None and seconds > elapsed + CLOCK_SLACK:
        return f"training_seconds {seconds:.1f} is more than the {elapsed:.1f} s the process had run"
    if total is not None and abs(total - elapsed) > CLOCK_SLACK + 0.02 * elapsed:
        return f"total_seconds {total:.1f} reported, but the process had run {elapsed:.1f} s when it reported"
    return ""


def _sandbox_line(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        if line.startswith(MARKER):
            return line[len(MARKER) :].strip()[:300]
    return ""


def training_limit(budget: float, seconds: float, num_steps: Any) -> float:
    """The most training_seconds a run of `budget` may report (see BUDGET_SLACK above)."""
    steps = num_steps if isinstance(num_steps, int) and not isinstance(num_steps, bool) else 0
    mean_step = seconds / max(1, steps - 1) if steps > 0 else 0.0
    return budget * BUDGET_SLACK + BUDGET_EPSILON + min(mean_step, LAST_STEP_SHARE * budget)


def judge(outcome: Outcome, result_path: Path, expected: Expected, tampering: str = "") -> Verdict:
    """Classify one run. `tampering` names what changed in prepare or the data ('' if nothing)."""
    if tampering:
        return Verdict(Status.INVALID, tampering, {})
    denied = _sandbox_line(outcome.tail)
    if denied:
        return Verdict(Status.INVALID, f"sandbox: train.py tried to {denied}", {})
    if outcome.timed_out:
        return Verdict(Status.TIMEOUT, f"still running after {outcome.wall_seconds:.1f} s; killed", {})
    rc = outcome.returncode
    if rc != 0:
        if rc == EXIT_DIVERGED or _DIVERGED_LINE.search(outcome.tail):
            return Verdict(Status.DIVERGED, "the run stopped itself on a NaN or exploding loss", {})
        if rc == -9 and SELF_KILL_MARKER in outcome.tail:
            return Verdict(Status.CRASH, "train.py killed itself with SIGKILL", {})
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
    metrics = {k: v for k, v in document.items() if k not in ("signature", "config", "harness")}
    harness = document.get("harness") if isinstance(document.get("harness"), dict) else {}
    evaluations = harness.get("evaluations") if isinstance(harness.get("evaluations"), list) else []
    extra = {
        "elapsed_seconds": harness.get("elapsed_seconds"),
        "evaluations": len(evaluations),
        # the scored model's size, measured by the metric: a genome that ignores the depth
        # override shows the same number at every depth
        "eval_num_params": evaluations[-1].get("num_params")
        if evaluations and isinstance(evaluations[-1], dict)
        else None,
    }

    mismatch = _mismatch(document, expected)
    if mismatch:
        return Verdict(Status.INVALID, mismatch, metrics)
    bpb = metrics.get("val_bpb")
    if isinstance(bpb, bool) or not isinstance(bpb, (int, float)):
        return Verdict(Status.INVALID, "result has no numeric val_bpb", metrics)
    seconds = metrics.get("training_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return Verdict(Status.INVALID, "result has no numeric training_seconds", metrics)
    limit = training_limit(expected.budget, seconds, metrics.get("num_steps"))
    if not seconds <= limit:  # also catches NaN
        return Verdict(
            Status.INVALID,
            f"training_seconds {seconds:.2f} over the budget of {expected.budget:g}",
            metrics,
            extra,
        )
    problem = _harness_problem(harness, metrics, expected, outcome.wall_seconds)
    if problem:
        return Verdict(Status.INVALID, problem, metrics, extra)

    summary = parse_summary(outcome.tail)
    if summary is None or "val_bpb" not in summary:
        return Verdict(Status.INVALID, "no summary block with val_bpb at the end of the log", metrics, extra)
    for key, printed in summary.items():
        if key in metrics and not _same_value(printed, metrics[key]):
            return Verdict(
                Status.INVALID,
                f"log says {key}: {printed} but the result file says {metrics[key]}",
                metrics,
                extra,
            )
    if not math.isfinite(bpb):
        return Verdict(Status.DIVERGED, f"val_bpb is {bpb}", metrics, extra)
    return Verdict(Status.OK, f"val_bpb {bpb:.6f}", metrics, extra)
