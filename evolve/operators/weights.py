"""Adaptive operator weights: operators whose children beat their parents get chosen more.

An operator's credit is the share of its attempts that produced a child better than its (best)
parent, smoothed by a prior (`prior_rate` over `prior_trials` pseudo-attempts) so that a new
operator starts at the prior and one bad streak does not silence it. Attempts count the
children that were decided (trained and judged, or refused by the guard or the novelty check)
and the proposals that failed outright (a merge conflict, an unusable LLM answer). The final
probabilities mix in a floor: every operator keeps at least `floor / n` of the draws. Then the
user's `[operators.NAME] weight` factors (default 1) scale them, so a weight steers the share an
operator gets while the credit still adapts it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..store import Store

PROPOSAL_FAILED = "proposal_failed"  # the event the engine records for a failed proposal


@dataclass(frozen=True)
class Credit:
    attempts: int = 0
    improvements: int = 0

    @property
    def rate(self) -> float:
        return self.improvements / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class OperatorWeights:
    prior_rate: float = 0.3
    prior_trials: float = 3.0
    floor: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.prior_rate <= 1 and self.prior_trials > 0 and 0 <= self.floor <= 1):
            raise ValueError("prior_rate and floor must be in [0, 1] and prior_trials > 0")

    def credit(self, c: Credit) -> float:
        return (c.improvements + self.prior_rate * self.prior_trials) / (c.attempts + self.prior_trials)

    def probabilities(
        self,
        names: Sequence[str],
        credits: Mapping[str, Credit],
        factors: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """The chance of drawing each operator; sums to 1 over `names` (`factors`: user weights)."""
        if not names:
            return {}
        raw = {n: self.credit(credits.get(n, Credit())) for n in names}
        total = sum(raw.values())
        share = {n: (v / total if total > 0 else 1 / len(names)) for n, v in raw.items()}
        probs = {n: (1 - self.floor) * share[n] + self.floor / len(names) for n in names}
        if factors:
            scaled = {n: p * max(0.0, float(factors.get(n, 1.0))) for n, p in probs.items()}
            norm = sum(scaled.values())
            if norm > 0:
                probs = {n: p / norm for n, p in scaled.items()}
        return probs

    def draw(
        self,
        names: Sequence[str],
        credits: Mapping[str, Credit],
        rng: random.Random,
        factors: Mapping[str, float] | None = None,
    ) -> str:
        probs = self.probabilities(names, credits, factors)
        return rng.choices(list(probs), weights=list(probs.values()), k=1)[0]


def credits_from_store(store: Store, run: str) -> dict[str, Credit]:
    """Every operator's attempts and improvements so far in `run` (its children and failed proposals)."""
    stats = store.operator_stats(run)
    decided: dict[str, int] = {}
    for ind in store.individuals(run):
        if ind.parents and (ind.decision is not None or ind.status.value == "rejected"):
            decided[ind.operator] = decided.get(ind.operator, 0) + 1
    failed: dict[str, int] = {}
    for event in store.events(run, kind=PROPOSAL_FAILED):
        op = str(event.payload.get("operator", ""))
        failed[op] = failed.get(op, 0) + 1
    names = set(stats) | set(decided) | set(failed)
    return {
        n: Credit(
            attempts=decided.get(n, 0) + failed.get(n, 0),
            improvements=int(stats.get(n, {}).get("improvements", 0)),
        )
        for n in names
    }
