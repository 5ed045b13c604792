"""What the judge reads from the store: seed-by-seed runs, the noise model, pairs and bounds.

`Evidence(store, run, depth)` reads a run's search-depth evaluations and individuals once (one
snapshot per decision) and answers the questions `evolve.promotion`'s pure functions need:

- the runs of an individual by seed (val_bpb, or None for a failed run, with its status);
- the noise key of a run: (profile, depth, budget, device kind), the device kind being the GPU's
  name (`cpu` on CPU); the noise model is built from the evaluations at one key only, and falls
  back to every device kind of that (profile, depth, budget) when a kind has no replicate yet;
- the reference parent of a child: its first parent (for a crossover, the better one when it was
  proposed: operators list parents best first), which it is paired with;
- the bound (`evolve.promotion.pessimistic`) every accepted individual is ranked by.

The engine, the Optuna operator, validation, the champion and `evolve status` all go through
here, so they cannot disagree about a score.

It reads only the evaluations the run's comparability key admits (`Store.score_key`, see
`evolve.records.ScoreKey`): a run on another device model under a time budget, or at another
budget, is neither a score nor a failure of its individual here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .promotion import (
    Action,
    Decision,
    NoiseModel,
    PromotionPolicy,
    Score,
    judge,
    paired_difference,
    pessimistic,
)
from .records import SEARCH_PURPOSES, Evaluation, Individual, ScoreKey
from .store import Store

FIRST_SEED = 42  # the k-th evaluation of any individual uses seed 42 + k: a child and its parent
# share seeds, so each of the child's runs has its parent's on the same data order and init


class NoiseKey(NamedTuple):
    profile: str
    depth: int
    budget: float
    kind: str  # the GPU's name, or "cpu"


def run_alpha(store: Store, run: str) -> float:
    """The alpha the run was started with (its elites' bounds use it), 0.05 by default."""
    r = store.get_run(run)
    return float((r.settings if r else {}).get("alpha", 0.05))


def device_kind(e: Evaluation) -> str:
    return e.gpu_name or "cpu"


def key_of(e: Evaluation) -> NoiseKey:
    return NoiseKey(e.profile, e.depth, round(float(e.budget), 6), device_kind(e))


class RunFact(NamedTuple):
    """One search-depth run as the noise model sees it."""

    individual: str
    seed: int
    key: NoiseKey
    value: float | None  # val_bpb, None for a run that failed


def reference_parent(parents: tuple[str, ...], scored: Container[str]) -> str | None:
    """The parent a child is paired with: its first parent that has a run at this depth (for a
    crossover, the better one when it was proposed: operators list parents best first)."""
    if not parents:
        return None
    return next((p for p in parents if p in scored), parents[0])


def main_key(runs: Iterable[RunFact]) -> NoiseKey | None:
    """The key most of these runs have (ok ones first)."""
    runs = list(runs)
    keys = Counter(r.key for r in runs if r.value is not None) or Counter(r.key for r in runs)
    return max(keys, key=lambda k: (keys[k], k)) if keys else None


def model_from_runs(
    runs: Iterable[RunFact],
    accepted: Iterable[str],
    key: NoiseKey | None,
    *,
    any_kind: bool = False,
) -> NoiseModel:
    """The noise model at `key` (every device kind of its profile, depth and budget with `any_kind`)."""
    values: dict[str, dict[int, float]] = {}
    for r in runs:
        if key is None or r.value is None:
            continue
        if (r.key[:3] == key[:3]) if any_kind else (r.key == key):
            values.setdefault(r.individual, {}).setdefault(r.seed, float(r.value))
    return NoiseModel.build(values, accepted)


def model_for_key(
    runs: Sequence[RunFact], accepted: Sequence[str], key: NoiseKey | None
) -> tuple[NoiseModel, str]:
    """The model a decision at `key` uses, and a note when it had to pool device kinds (a kind
    with no replicate yet borrows the noise of the others at the same profile, depth and budget)."""
    model = model_from_runs(runs, accepted, key)
    if model.tau() is None and key is not None:
        pooled = model_from_runs(runs, accepted, key, any_kind=True)
        if pooled.tau() is not None:
            return pooled, f"no replicate on {key.kind} yet: noise of every device kind"
    return model, ""


@dataclass(frozen=True)
class Judged:
    """A decision with what it was made against."""

    decision: Decision
    parent: str | None
    model: NoiseModel
    improvement: float | None  # mean child - parent over every ok paired seed (< 0: better)
    failed: bool  # the child failed on a seed (crash, diverged, ...)


@dataclass
class _Fold:
    """One (depth, key)'s runs by individual and seed, folded forward over a run's evaluations
    (kept in `evolve.snapshots` beside the run). An inner dict is replaced, never changed, so an
    `Evidence` holding the old one keeps its view."""

    seen: int = 0  # evaluations folded in
    by_ind: dict[str, dict[int, Evaluation]] = field(default_factory=dict)
    ok_keys: Counter = field(default_factory=Counter)  # NoiseKey -> kept ok runs
    all_keys: Counter = field(default_factory=Counter)

    def fold(self, evaluations: Sequence[Evaluation], depth: int, key: ScoreKey | None) -> None:
        for e in evaluations[self.seen :]:
            if (
                e.depth != depth
                or e.purpose not in SEARCH_PURPOSES
                or (key is not None and not key.admits(e.key))
            ):
                continue
            runs = self.by_ind.get(e.individual, {})
            if e.seed in runs:
                continue
            self.by_ind[e.individual] = {**runs, e.seed: e}
            k = key_of(e)
            self.all_keys[k] += 1
            if e.ok:
                self.ok_keys[k] += 1
        self.seen = len(evaluations)


class Evidence:
    """One run's search-depth evaluations and individuals, as they are now.

    Built from the store's incremental snapshot of the run (`evolve.snapshots`): what a new row
    changed is folded in, the rest is shared, so making one per decision costs little however long
    the run is. The noise models of an unchanged run are shared too."""

    def __init__(self, store: Store, run: str, depth: int) -> None:
        self.run, self.depth = run, depth
        self.key = store.score_key(depth, run)
        with store.snapshots.fresh(store._query, run) as snap:
            self.individuals: dict[str, Individual] = dict(snap.individuals)
            fold = snap.kept.setdefault(("runs", depth, self.key), _Fold())
            fold.fold(snap.evaluations, depth, self.key)
            self.by_ind: dict[str, dict[int, Evaluation]] = dict(fold.by_ind)
            self._ok_keys, self._all_keys = Counter(fold.ok_keys), Counter(fold.all_keys)
            # noise models and notes of this version of the run, shared by every Evidence of it
            self._models: dict[tuple, NoiseModel] = snap.derived.setdefault(("models", depth, self.key), {})
            self._notes: dict[NoiseKey | None, str] = snap.derived.setdefault(("notes", depth, self.key), {})
        self._accepted: list[str] | None = None

    # --- runs -----------------------------------------------------------------------------------
    def runs(self, ind: str) -> dict[int, Evaluation]:
        return dict(sorted(self.by_ind.get(ind, {}).items()))

    def values(self, ind: str) -> dict[int, float | None]:
        """val_bpb by seed; None for a run that failed."""
        return {s: (e.val_bpb if e.ok else None) for s, e in self.runs(ind).items()}

    def score(self, ind: str) -> Score | None:
        ok = [v for v in self.values(ind).values() if v is not None]
        return Score.of(ok) if ok else None

    def accepted(self) -> list[str]:
        if self._accepted is None:
            self._accepted = [i for i, ind in self.individuals.items() if ind.decision == "accept"]
        return list(self._accepted)

    def reference(self, ind: str) -> str | None:
        """The parent a child is paired with (`reference_parent`)."""
        row = self.individuals.get(ind)
        return reference_parent(row.parents, self.by_ind) if row is not None else None

    # --- the noise model ------------------------------------------------------------------------
    def facts(self, ind: str | None = None) -> list[RunFact]:
        seeds = self.by_ind.items() if ind is None else [(ind, self.by_ind.get(ind, {}))]
        return [
            RunFact(i, s, key_of(e), e.val_bpb if e.ok else None)
            for i, runs in seeds
            for s, e in runs.items()
        ]

    def main_key(self, ind: str | None = None) -> NoiseKey | None:
        """The key most of `ind`'s ok runs have (of the whole run's, without `ind`)."""
        if ind is not None:
            return main_key(self.facts(ind))
        keys = self._ok_keys or self._all_keys  # what main_key(self.facts()) counts
        return max(keys, key=lambda k: (keys[k], k)) if keys else None

    def _replicates(self) -> list[RunFact]:
        """The runs of accepted individuals: the only ones a noise model is built from."""
        return [f for i in dict.fromkeys(self.accepted()) for f in self.facts(i)]

    def model(self, key: NoiseKey | None = None, *, any_kind: bool = False) -> NoiseModel:
        """The noise model at `key` (default: the run's main key); `any_kind` pools device kinds."""
        key = key or self.main_key()
        cache = (key, any_kind)
        if cache not in self._models:
            self._models[cache] = model_from_runs(self._replicates(), self.accepted(), key, any_kind=any_kind)
        return self._models[cache]

    def model_for(self, ind: str) -> tuple[NoiseModel, str]:
        """The model a decision on `ind` uses (`model_for_key` at `ind`'s key)."""
        key = self.main_key(ind)
        cache = ("for", key)
        if cache not in self._models:
            model, note = model_for_key(self._replicates(), self.accepted(), key)
            self._models[cache] = model
            self._notes[key] = note
        return self._models[cache], self._notes[key]

    # --- decisions and ranks --------------------------------------------------------------------
    def judge(self, ind: str, policy: PromotionPolicy) -> Judged:
        parent = self.reference(ind)
        model, note = self.model_for(ind)
        child = self.values(ind)
        failed = {s: e.status for s, e in self.runs(ind).items() if not e.ok}
        if parent is None:
            d = Decision(Action.ACCEPT, "a root: no parent to compare with")
            return Judged(d, None, model, None, bool(failed))
        theirs = self.values(parent)
        decision = judge(child, theirs, model, policy, failed=failed)
        if note:
            decision = Decision(**{**decision.__dict__, "reason": f"{decision.reason} [{note}]"})
        diff = paired_difference(child, theirs)
        return Judged(decision, parent, model, diff[0] if diff else None, bool(failed))

    def bound(self, ind: str, policy: PromotionPolicy) -> float | None:
        score = self.score(ind)
        if score is None:
            return None
        return pessimistic(score, self.model_for(ind)[0], policy.alpha)

    def ranked(self, policy: PromotionPolicy, *, include_baseline: bool = True) -> list[tuple[str, float]]:
        """Accepted individuals by their bound, best first (ties: more seeds, then id)."""
        out = []
        for i in self.accepted():
            row = self.individuals[i]
            if not include_baseline and not row.parents:
                continue
            b = self.bound(i, policy)
            if b is not None:
                out.append((i, b, -(self.score(i).n)))  # type: ignore[union-attr]
        return [(i, b) for i, b, _ in sorted(out, key=lambda x: (x[1], x[2], x[0]))]
