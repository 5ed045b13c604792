"""One individual as the web view's side panel shows it: its judging, seeds, diffs, curves, logs, LLM.

Its row comes from the lineage frame, its evaluations and LLM calls from the store's read paths,
its diffs from `git diff` against each parent (a crossover has two), and the log tails from the
files the store points to, read only when they lie inside the workspace (a hand-edited store
cannot make the view read any other file).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from evolve.live import event_text
from evolve.scheduler import read_log

from ..report import commit_diff
from .views import WebView, inside, jsonable

LOG_TAIL_LINES = 80
# The engine's events about judging one individual (`evolve.engine_promotion`), in the order it wrote them.
JUDGING = ("reevaluate", "decision", "confirm_start", "confirmed")
# The baseline's progress line (`step 00025 | loss 3.2101 | ...`); a train.py that prints none has no curve.
STEP_LINE = re.compile(r"^step\s+(\d+)\s*\|\s*loss\s+([-+0-9.eE]+|nan|inf)", re.MULTILINE)
_SHOWN = ("id", "run", "commit", "branch", "operator", "kind", "island", "generation", "status", "decision",
          "created", "started", "finished", "depth", "val_bpb_mean", "val_bpb_std", "val_bpb_n", "delta_parent",
          "bound", "confirmation", "confirmed_bpb_mean", "confirmed_bpb_n", "confirmed_seeds",
          "delta_baseline", "validation_depth", "validation_bpb_mean", "validation_bpb_n",
          "validation_delta_baseline", "verdict", "description", "guard_reason", "gpu_seconds",
          "llm_tokens", "llm_cost")  # fmt: skip


def curve(log: str) -> list[list[float]]:
    """(step, training loss) pairs from a log's progress lines."""
    return [[int(m[1]), float(m[2])] for m in STEP_LINE.finditer(log)]


def _log(view: WebView, path: str | None) -> tuple[str, str | None]:
    """The log's text and its path relative to the workspace ('' and a note when not readable here)."""
    if not path:
        return "", None
    p = inside(view.root, path)
    if p is None:
        return "", "(the log lies outside the workspace: not shown)"
    return read_log(str(p)), p.relative_to(view.root).as_posix()


def individual(view: WebView, run: str, ind_id: str) -> dict[str, Any]:
    row = view.row(run, ind_id)
    d = view.frame(run)
    commits = dict(zip(d["id"], d["commit"], strict=True))
    paths = view.mutable(run)
    diffs = [
        {"parent": p, "commit": commits.get(p),
         "diff": commit_diff(view.root, commits[p], row["commit"], paths) if p in commits
         else f"(parent {p} is not in run {run!r})"}
        for p in row["parents"]
    ]  # fmt: skip
    with view.store() as store:
        evaluations = store.evaluations(ind_id)
        calls = []
        for call in store.llm_calls(individual=ind_id):
            text = store.llm_text(call.id)  # the prompt's messages and the answer, when kept
            calls.append(
                {**asdict(call), "messages": text[0] if text else None, "answer": text[1] if text else None}
            )
        proposed = [e for e in store.events(run, kind="proposed") if e.payload.get("id") == ind_id]
        # How it was judged, in the engine's own words (the lines `evolve status` shows).
        mine = [e for k in JUDGING for e in store.events(run, kind=k) if e.payload.get("id") == ind_id]
        mine += [e for e in store.events(run, kind="pair") if e.payload.get("child") == ind_id]
        judging = [
            {**e.payload, "time": e.time, "kind": e.kind, "text": event_text(e.kind, e.payload)}
            for e in sorted(mine, key=lambda e: e.id)
        ]
    evs = []
    for e in evaluations:
        text, where = _log(view, e.log_path)
        lines = (text or e.error_tail).splitlines()
        evs.append({
            "id": e.id, "purpose": e.purpose.value, "depth": e.depth, "budget": e.budget, "seed": e.seed,
            "status": e.status, "val_bpb": e.val_bpb, "training_seconds": e.training_seconds,
            "wall_seconds": e.wall_seconds, "device": e.device, "gpu_name": e.gpu_name, "reason": e.reason,
            "created": e.created, "log": where, "log_tail": "\n".join(lines[-LOG_TAIL_LINES:]),
            "log_lines": len(lines), "curve": curve(text),
        })  # fmt: skip
    notes = proposed[-1].payload.get("notes", {}) if proposed else {}
    return jsonable({
        **{k: row[k] for k in _SHOWN},
        "parents": list(row["parents"]),
        "children": list(d.loc[d["parents"].map(lambda ps: ind_id in ps), "id"]),
        "mutable": list(paths),
        "diffs": diffs,
        "evaluations": evs,
        "llm": {"calls": calls, "notes": notes},
        "proposed": asdict(proposed[-1]) if proposed else None,
        "judging": judging,
        "judged": next((j["reason"] for j in reversed(judging) if j["kind"] == "decision"), None),
    })  # fmt: skip
