"""Meta-insights: every K finished children, the LLM condenses what worked and what did not.

The result is a short scratchpad (What worked / What did not work / Next ideas) stored in the
store's meta_insights table and shown in every later prompt. It is triggered from inside the LLM
operators, so the engine needs no hook: the first proposal that finds the scratchpad due takes a
lock and writes it; proposals running at the same time skip it. "Due" is computed from the store
(finished children // K > scratchpads written), so a resumed run carries on where it was, and
a failed attempt waits for the next K children instead of retrying on every proposal.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..judging import Evidence
from ..store import Status
from .client import LLMClient, LLMError, ReportLLM
from .prompts import REQUIRED, Counter, Part, fit, program_text

if TYPE_CHECKING:
    from genome.repo import GenomeRepo

    from ..store import Store

log = logging.getLogger("evolve.llm")

MAX_INSIGHT_CHARS = 3000
RECENT_CHILDREN = 60
FINISHED = (Status.EVALUATED, Status.FAILED, Status.REJECTED)

SYSTEM = (
    "You keep the research notebook of an evolutionary search that edits a language model's "
    "training script, train.py, to lower val_bpb (lower is better) within a fixed time budget. "
    "Other researchers read your notes before each new experiment, so make them short, concrete "
    "and correct."
)
TASK = (
    "Write the updated notes: at most 15 short bullet lines under the headings `What worked`, "
    "`What did not work` and `Next ideas`. Name concrete changes with their effect (e.g. "
    "'warm-down 0.6 instead of 0.5: -0.004'), merge with the previous notes, drop whatever newer "
    "results contradict, and count a change within the noise as no effect. Output only the notes."
)


class Insights:
    """The scratchpad writer of one run (shared by the LLM operators)."""

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
        return len(self.store.insights(self.run, limit=1_000_000))

    def due(self) -> bool:
        if self.every <= 0:
            return False
        finished = self.finished_children()
        return finished >= self._retry_at and finished // self.every > self.written()

    def maybe_update(
        self,
        client: LLMClient,
        model: str,
        report: ReportLLM,
        repo: GenomeRepo,
        count: Counter,
        budget: int,
    ) -> str | None:
        """Write a new scratchpad when one is due and no other thread is writing; never raises."""
        if self.every <= 0 or not self._lock.acquire(blocking=False):
            return None
        try:
            if not self.due():
                return None
            messages = self.prompt(repo, count, budget)
            try:
                completion = client.complete(messages, model, report)
            except LLMError as exc:
                self._retry_at = self.finished_children() + self.every
                log.warning("meta-insights skipped: %s", exc)
                return None
            text = completion.text.strip()
            if not text or completion.truncated and len(text) < 40:
                self._retry_at = self.finished_children() + self.every
                log.warning("meta-insights skipped: the answer was empty or cut off")
                return None
            if len(text) > MAX_INSIGHT_CHARS:
                text = text[:MAX_INSIGHT_CHARS].rsplit("\n", 1)[0]
            self.store.add_insight(text, run=self.run)
            return text
        finally:
            self._lock.release()

    def prompt(self, repo: GenomeRepo, count: Counter, budget: int) -> tuple[dict[str, str], ...]:
        scores = self.store.scores(self.depth, self.run)
        previous = self.store.insights(self.run, limit=1)
        children = [i for i in self.store.individuals(self.run, status=FINISHED) if i.parents]
        lines = []
        for ind in reversed(children[-RECENT_CHILDREN:]):  # newest first: trimming drops the oldest
            score = scores.get(ind.id)
            best_parent = min((scores[p].mean for p in ind.parents if p in scores), default=None)
            if score is None:
                evals = self.store.evaluations(ind.id)
                why = ind.guard_reason or (
                    evals[-1].reason or evals[-1].status if evals else ind.status.value
                )
                outcome = f"{ind.status.value}: {' '.join(str(why).split())[:160]}"
            elif best_parent is None:
                outcome = f"{score.mean:.6f}"
            else:
                outcome = f"{score.mean:.6f} ({score.mean - best_parent:+.6f} vs best parent)"
            lines.append(f"- {ind.id} [{ind.operator}] {ind.description}: {outcome}")
        best = sorted(scores.items(), key=lambda kv: kv[1].mean)[:5]
        noise = Evidence(self.store, self.run, self.depth).model().sigma
        leaders = [f"- {i}: {s.mean:.6f} (n={s.n})" for i, s in best]
        if noise:
            leaders.append(f"(seed-to-seed noise: ±{noise:.4f})")
        instructions = program_text(repo).strip()
        parts = [
            Part("The human's research instructions", [instructions[:4000]], REQUIRED),
            Part("The previous notes", [previous[-1] if previous else "(none yet)"], REQUIRED),
            Part("The best so far", leaders or ["(nothing scored yet)"], REQUIRED),
            Part("Finished children, newest first", lines, 10),
            Part("Your task", [TASK], REQUIRED),
        ]
        return fit(SYSTEM, parts, budget, count).messages
