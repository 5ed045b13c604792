"""Noise-aware promotion: scores over seeds, the noise floor, and the accept/reject/re-evaluate rule.

Two runs of the same code with different seeds give different val_bpb. The spread between them
(the noise floor) is measured on the baseline, which is evaluated `baseline_seeds` times at the
start, and refined by every re-evaluation that comes in. A child is promoted only on evidence that
is larger than that noise, or after enough seeds that its mean can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Score:
    """The mean val_bpb of one individual over its ok evaluations at one depth (lower is better)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Score:
        if not values:
            raise ValueError("a score needs at least one value")
        n = len(values)
        mean = math.fsum(values) / n
        # Sample standard deviation: the seed-to-seed spread, 0 for a single run.
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean=mean, std=std, n=n)

    def __str__(self) -> str:
        return f"{self.mean:.6f} ± {self.std:.6f} (n={self.n})"


def pooled_std(groups: Iterable[Sequence[float]]) -> float | None:
    """The pooled seed-to-seed standard deviation over groups of repeated runs of one code.

    sqrt(sum_i (n_i - 1) * s_i^2 / sum_i (n_i - 1)), over groups with n_i >= 2, where s_i is the
    sample standard deviation of group i. None when no group has two runs yet.
    """
    sum_sq = 0.0
    dof = 0
    for values in groups:
        if len(values) < 2:
            continue
        mean = math.fsum(values) / len(values)
        sum_sq += math.fsum((v - mean) ** 2 for v in values)
        dof += len(values) - 1
    return math.sqrt(sum_sq / dof) if dof else None


class Action(str, Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    REEVALUATE = "reevaluate"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def decide(
    child: Score,
    parent: Score | None,
    best: Score | None,
    floor: float | None,
    *,
    max_seeds: int = 3,
    margin: float = 2.0,
) -> Decision:
    """Whether a child joins the population, is dropped, or needs another seed first.

    `child`, `parent` and `best` are means over seeds at the search depth; `parent` is the child's
    parent (for a crossover, the better of its parents); `best` is the best score of the run so far
    other than the child's own; `floor` is the pooled seed-to-seed standard deviation (None, when
    not yet measured, counts as 0). With c, p, b the means, f the floor and n the child's count:

    1. If n < max_seeds, re-evaluate when the child would become the overall best (c < b), or when
       it beats its parent by less than `margin` floors (0 < p - c < margin * f).
    2. Otherwise accept when the child beats its parent (c < p) and reject when not (c >= p).
       Without a parent the child is compared with the best; without either it is accepted.

    So a child clearly worse than its parent is rejected after one seed, a child clearly better
    (by at least `margin` floors) is accepted after one seed unless it would become the champion,
    and every champion and every narrow win is backed by `max_seeds` evaluations.
    """
    f = floor or 0.0
    c = child.mean
    reference = parent if parent is not None else best
    if child.n < max_seeds:
        if best is not None and c < best.mean:
            return Decision(
                Action.REEVALUATE,
                f"would become the best ({child} < {best}); n={child.n} < {max_seeds} seeds",
            )
        if reference is not None and 0 < reference.mean - c < margin * f:
            return Decision(
                Action.REEVALUATE,
                f"beats its parent by {reference.mean - c:.6f} < {margin:g} x floor {f:.6f}; "
                f"n={child.n} < {max_seeds} seeds",
            )
    if reference is None:
        return Decision(Action.ACCEPT, f"first score {child}")
    what = "parent" if parent is not None else "best"
    if c < reference.mean:
        return Decision(Action.ACCEPT, f"{child} beats its {what} {reference} by {reference.mean - c:.6f}")
    return Decision(Action.REJECT, f"{child} does not beat its {what} {reference}")


def describe_rule(floor: float | None, *, max_seeds: int = 3, margin: float = 2.0) -> str:
    """`decide`'s rule in words, with this run's numbers: what the LLM prompts tell a researcher.

    Keep it next to `decide` and change both together: it is the only description of the rule."""
    if floor:
        bar = f"{margin:g} x the noise floor ({margin:g} x {floor:.4f} = {margin * floor:.4f} val_bpb now)"
    else:
        bar = f"{margin:g} x the noise floor (not measured yet, so any win counts as clear for now)"
    return (
        "A child is trained on one seed first and compared with its parent (for a crossover, the "
        "better of its two parents). If its val_bpb is not below the parent's, it is rejected at once. "
        f"If it is lower by at least {bar}, it is accepted after that one seed, unless it would become "
        f"the best of the run. A narrower win, and every would-be best, is trained on more seeds (up "
        f"to {max_seeds} in all) and accepted only if its mean stays below the parent's."
    )


@dataclass(frozen=True)
class PromotionPolicy:
    """The promotion settings of a run (`--baseline-seeds`, max seeds per child, margin in floors)."""

    baseline_seeds: int = 3
    max_seeds: int = 3
    margin: float = 2.0

    def __post_init__(self) -> None:
        if self.baseline_seeds < 1 or self.max_seeds < 1 or self.margin < 0:
            raise ValueError("baseline_seeds and max_seeds must be >= 1 and margin >= 0")

    def baseline_pending(self, done: int) -> int:
        """How many more baseline evaluations to run when `done` have finished ok."""
        return max(0, self.baseline_seeds - done)

    def decide(self, child: Score, parent: Score | None, best: Score | None, floor: float | None) -> Decision:
        return decide(child, parent, best, floor, max_seeds=self.max_seeds, margin=self.margin)

    def describe(self, floor: float | None) -> str:
        """The rule in words (see `describe_rule`)."""
        return describe_rule(floor, max_seeds=self.max_seeds, margin=self.margin)
