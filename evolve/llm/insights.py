"""Meta-insights: every K finished children, the LLM rewrites the run's notebook, and it is checked.

The notebook has three parts, `What helped`, `What hurt` and `Open questions`, each a list of
bullets, and every bullet cites the individuals it rests on: helped and hurt bullets with the
delta each cited child measured against its best parent (as the insights prompt lists them), or
`failed` for a child that produced no score. `check` keeps only the bullets whose citations are
real individuals of this run with their measured deltas (within rounding) on the side they claim
(helped: lower val_bpb; hurt: higher, or a failure). An answer with no bullet left ("I have no
idea.", prose without citations, an empty answer) is dropped: its call is recorded `unusable`
with why, and the previous notes stay. A kept answer is the next version of the notebook in the
store (meta_insights: the text, the checked items, the dropped lines with why); it replaces the
previous one in every later prompt, nothing is appended.

It is triggered from inside the LLM operators, so the engine needs no hook: the first proposal that
finds the notebook due takes a lock and writes it; proposals running at the same time skip it.
"Due" is computed from the store (finished children // K > versions written), so a resumed run
carries on where it was, and a failed attempt waits for the next K children instead of retrying
on every proposal. Its calls are the run's (purpose `insights`), not the child's being proposed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..judging import Evidence
from ..store import Status
from .client import LLMClient, LLMError
from .prompts import REQUIRED, Counter, Part, fit, program_text

if TYPE_CHECKING:
    from ..operators.base import ProposalContext
    from ..store import Store

log = logging.getLogger("evolve.llm")

PURPOSE = "insights"
MAX_BULLETS = 15
MAX_BULLET_CHARS = 400
RECENT_CHILDREN = 60
FINISHED = (Status.EVALUATED, Status.FAILED, Status.REJECTED)
KINDS = ("helped", "hurt", "open")
TITLES = {"helped": "What helped", "hurt": "What hurt", "open": "Open questions"}
_HEADINGS = {
    "helped": ("what helped", "helped", "what worked", "worked"),
    "hurt": ("what hurt", "hurt", "what did not work", "did not work", "what didn't work"),
    "open": ("open questions", "open question", "questions", "next ideas", "ideas"),
}
_ID = re.compile(r"\b(g\d{4,})\b")
_NUMBER = re.compile(r"[+\-\u2212\u2013]?\s?(?:\d+\.\d*|\.\d+|\d+)(?:e[+\-]?\d+)?", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*)$")

SYSTEM = (
    "You keep the research notebook of an evolutionary search that edits a language model's "
    "training script, train.py, to lower val_bpb (lower is better) within a fixed time budget. "
    "Other researchers read your notes before each new experiment, so every claim must rest on "
    "measured results, cited by individual."
)
TASK = (
    "Rewrite the notebook from the results above; it replaces the previous notes. Use exactly three "
    "headings, `What helped`, `What hurt` and `Open questions`, each followed by `- ` bullets "
    f"({MAX_BULLETS} bullets at most in all). Every bullet names a concrete change and cites, in "
    "square brackets, the individuals it rests on, each with the delta listed above for it (its "
    "val_bpb minus its best parent's), e.g. `- warm-down 0.6 instead of 0.5 [g0012 -0.0041, g0031 "
    "-0.0032]`; cite a child without a score as `[g0007 failed]`. What helped: negative deltas only. "
    "What hurt: positive deltas or failures. A delta within the noise is no effect: say so under "
    "Open questions. Open questions cite the individuals that raise them. A bullet that cites no "
    "individual listed above, or a delta other than the measured one, is dropped. Output only the "
    "headings and bullets."
)


@dataclass(frozen=True)
class Fact:
    """What one finished child measured: its delta against its best parent, or why it has none."""

    id: str
    delta: float | None  # mean val_bpb minus the best parent's; None without both scores
    failed: bool  # no score: failed training or refused (guard, duplicate)
    line: str  # how the insights prompt lists it


@dataclass(frozen=True)
class Checked:
    """The bullets of an answer that passed the check, and those dropped with why."""

    items: list[dict[str, Any]]
    dropped: list[dict[str, str]]

    def text(self) -> str:
        """The notes as later prompts show them: the three headings, each with its bullets."""
        out = []
        for kind in KINDS:
            bullets = [f"- {i['text']}" for i in self.items if i["kind"] == kind]
            if bullets:
                out.append(TITLES[kind] + "\n" + "\n".join(bullets))
        return "\n".join(out)


def facts(store: Store, run: str, depth: int) -> dict[str, Fact]:
    """Every finished child of the run, oldest first, with what it measured."""
    scores = store.scores(depth, run)
    out: dict[str, Fact] = {}
    for ind in store.individuals(run, status=FINISHED):
        if not ind.parents:
            continue
        score = scores.get(ind.id)
        parent_means = [scores[p].mean for p in ind.parents if p in scores]
        delta = score.mean - min(parent_means) if score is not None and parent_means else None
        if score is None:
            evals = store.evaluations(ind.id)
            why = ind.guard_reason or (evals[-1].reason or evals[-1].status if evals else ind.status.value)
            outcome = f"{ind.status.value}: {' '.join(str(why).split())[:160]}"
        elif delta is None:
            outcome = f"{score.mean:.6f}"
        else:
            outcome = f"{score.mean:.6f} ({delta:+.6f} vs best parent)"
        line = f"- {ind.id} [{ind.operator}] {ind.description}: {outcome}"
        out[ind.id] = Fact(ind.id, delta, score is None, line)
    return out


def _heading(line: str) -> str | None:
    text = line.strip().strip("#*_`: ").strip().rstrip(":").strip().lower()
    for kind, names in _HEADINGS.items():
        if text in names:
            return kind
    return None


def _bullets(answer: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(kind, text) of every bullet under a heading; lines that are neither, dropped with why."""
    bullets: list[list[str]] = []
    dropped: list[dict[str, str]] = []
    kind: str | None = None
    for raw in answer.splitlines():
        if not raw.strip():
            continue
        heading = _heading(raw)
        if heading is not None:
            kind = heading
            continue
        match = _BULLET.match(raw)
        if match and kind is not None:
            bullets.append([kind, match.group(1).strip()])
        elif bullets and kind is not None and raw.startswith((" ", "\t")):
            bullets[-1][1] += " " + raw.strip()  # a bullet's continuation line
        else:
            dropped.append({"line": raw.strip()[:200], "why": "not a bullet under one of the three headings"})
    return [(k, t) for k, t in bullets], dropped


def _numbers(text: str) -> list[float]:
    out = []
    for match in _NUMBER.finditer(text):
        raw = match.group(0).replace("\u2212", "-").replace("\u2013", "-").replace(" ", "")
        try:
            out.append(float(raw))
        except ValueError:
            continue
    return out


def _tolerance(measured: float) -> float:
    return max(5e-4, 0.1 * abs(measured)) + 1e-9  # rounding to 3-4 decimals, or to 2 digits


def check_bullet(kind: str, text: str, known: Mapping[str, Fact]) -> tuple[list[dict[str, Any]], str]:
    """(citations, "") when the bullet holds, else ([], why it was dropped).

    A citation is an id of a finished child; its delta is a number between it and the next id
    that equals the measured one within rounding."""
    mentions = list(_ID.finditer(text))
    if not mentions:
        return [], "cites no individual"
    cites: list[dict[str, Any]] = []
    for k, match in enumerate(mentions):
        ind = match.group(1)
        fact = known.get(ind)
        if fact is None:
            return [], f"cites {ind}, which is not a finished child of this run"
        stop = mentions[k + 1].start() if k + 1 < len(mentions) else len(text)
        numbers = _numbers(text[match.end() : stop])
        if fact.delta is None:
            if kind == "helped" and fact.failed:
                return [], f"{ind} has no score: it cannot show what helped"
            cites.append({"id": ind, "delta": None})
        elif any(abs(n - fact.delta) <= _tolerance(fact.delta) for n in numbers):
            cites.append({"id": ind, "delta": fact.delta})
        elif kind == "open" and not numbers:
            cites.append({"id": ind, "delta": fact.delta})
        elif numbers:
            return [], f"{ind}: claims {numbers[0]:+g}, measured {fact.delta:+.6f}"
        else:
            return [], f"{ind} is cited without its measured delta ({fact.delta:+.6f})"
    deltas = [c["delta"] for c in cites if c["delta"] is not None]
    if kind == "helped" and not any(d < 0 for d in deltas):
        return [], "a 'helped' bullet whose cited deltas are not below zero"
    if kind == "hurt" and not (any(d > 0 for d in deltas) or any(known[c["id"]].failed for c in cites)):
        return [], "a 'hurt' bullet whose cited children neither got worse nor failed"
    return cites, ""


def check(answer: str, known: Mapping[str, Fact]) -> Checked:
    """The bullets of `answer` that cite real individuals with their measured deltas."""
    bullets, dropped = _bullets(answer)
    items: list[dict[str, Any]] = []
    for kind, text in bullets:
        if len(items) >= MAX_BULLETS:
            dropped.append({"line": text[:200], "why": f"over {MAX_BULLETS} bullets"})
            continue
        text = text[:MAX_BULLET_CHARS]
        cites, why = check_bullet(kind, text, known)
        if why:
            dropped.append({"line": text[:200], "why": why})
        else:
            items.append({"kind": kind, "text": text, "cites": cites})
    return Checked(items, dropped)


class Insights:
    """The notebook writer of one run (shared by the LLM operators)."""

    def __init__(self, store: Store, run: str, depth: int, every: int) -> None:
        self.store = store
        self.run = run
        self.depth = depth
        self.every = every
        self._lock = threading.Lock()
        self._retry_at = 0  # finished-children count before which a failed attempt is not retried

    def finished_children(self) -> int:
        return sum(1 for ind in self.store.individuals(self.run, status=FINISHED) if ind.parents)

    def written(self) -> int:
        versions = self.store.insight_versions(self.run, limit=1)
        return versions[-1].version if versions else 0

    def due(self) -> bool:
        if self.every <= 0:
            return False
        finished = self.finished_children()
        return finished >= self._retry_at and finished // self.every > self.written()

    def maybe_update(
        self, client: LLMClient, model: str, ctx: ProposalContext, count: Counter, budget: int
    ) -> str | None:
        """Write the next version when one is due and no other thread is writing; never raises.

        Returns the new notes, or None (not due, busy, the call failed, or the answer was dropped)."""
        if self.every <= 0 or not self._lock.acquire(blocking=False):
            return None
        try:
            if not self.due():
                return None
            finished = self.finished_children()
            known = facts(self.store, self.run, self.depth)
            messages = self.prompt(ctx, known, count, budget)
            try:
                completion = client.complete(messages, model, ctx.report_llm, PURPOSE)
            except LLMError as exc:
                self._retry_at = finished + self.every
                log.warning("meta-insights skipped: %s", exc)
                return None
            checked = check(completion.text, known) if not completion.truncated else Checked([], [])
            if not checked.items:
                why = (
                    "the answer was empty" if not completion.text.strip()
                    else "the answer was cut off at the token limit" if completion.truncated
                    else "no bullet cites an individual of this run with its measured delta"
                    + (f" (first dropped: {checked.dropped[0]['why']})" if checked.dropped else "")
                )  # fmt: skip
                if completion.call is not None:
                    ctx.settle_llm(completion.call, "unusable", why)
                self._retry_at = finished + self.every
                log.warning("meta-insights dropped: %s", why)
                return None
            text = checked.text()
            version = self.store.add_insight(text, run=self.run, items=checked.items, dropped=checked.dropped,
                                             children=finished, call=completion.call)  # fmt: skip
            if completion.call is not None:
                kept = (
                    f"version {version}: {len(checked.items)} bullet(s) kept, {len(checked.dropped)} dropped"
                )
                ctx.settle_llm(completion.call, "usable", kept)
            return text
        finally:
            self._lock.release()

    def prompt(
        self, ctx: ProposalContext, known: Mapping[str, Fact], count: Counter, budget: int
    ) -> tuple[dict[str, str], ...]:
        scores = self.store.scores(self.depth, self.run)
        previous = self.store.insight_versions(self.run, limit=1)
        lines = [f.line for f in reversed(list(known.values())[-RECENT_CHILDREN:])]  # newest first
        best = sorted(scores.items(), key=lambda kv: kv[1].mean)[:5]
        noise = Evidence(self.store, self.run, self.depth).model().sigma
        leaders = [f"- {i}: {s.mean:.6f} (n={s.n})" for i, s in best]
        if noise:
            leaders.append(f"(seed-to-seed noise: ±{noise:.4f})")
        instructions = program_text(ctx.repo).strip()
        notes = previous[-1].text if previous else "(none yet)"
        parts = [
            Part("The human's research instructions", [instructions[:4000]], REQUIRED),
            Part("The previous notes", [notes], REQUIRED),
            Part("The best so far", leaders or ["(nothing scored yet)"], REQUIRED),
            Part("Finished children, newest first (delta = its val_bpb minus its best parent's)", lines, 10),
            Part("Your task", [TASK], REQUIRED),
        ]
        return fit(SYSTEM, parts, budget, count).messages
