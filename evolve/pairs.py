"""Pairs worth crossing: who may be crossed with whom, which partner suits a parent, what a child took.

The engine asks whether a pair exists at all (`Family.unrelated_pair`: a crossover's early try
waits for one) and picks two unrelated parents; both crossovers then rank the partners they may
take (`rank_partners`) and say in the child's description what it took from each (`took`).

- Partners are never ancestor and descendant: a merge of a parent with its own ancestor gives back
  the descendant. Ancestry is read from the store's parents, which are git's (every individual is
  a commit whose parents are its parents' commits).
- Among unrelated candidates, the partner whose changes since the common ancestor complement the
  first parent's comes first: the two changed different knobs (UPPER_CASE constants) and different
  code regions, and both score better than that ancestor. Next come partners that at least change
  different things, then the rest, whose changes overlap (git conflicts there; the LLM crossover
  may still resolve it). Within a tier, a partner already crossed with the first parent fewer
  times comes first, then the order they came in (the strategy's draw first), so the selection
  pressure of the population still decides among equals.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from genome.errors import GenomeError
from genome.hyperparams import parse_hyperparams
from genome.merge import merge_base

if TYPE_CHECKING:
    from genome.repo import GenomeRepo

    from .operators.base import Parent, ProposalContext
    from .population import Member
    from .store import Individual, Store

PARTNERS = 8  # other members the engine offers a crossover as partners of its first parent
Files = Mapping[str, str]  # path -> text of the mutable files at one commit


class Family:
    """Who descends from whom among a run's individuals (from the store's rows, no git call)."""

    def __init__(self, individuals: Iterable[Individual]) -> None:
        self.parents: dict[str, tuple[str, ...]] = {}
        self.by_commit: dict[str, str] = {}
        self._crossed: dict[frozenset[str], int] = {}
        for ind in individuals:
            self.parents[ind.id] = ind.parents
            self.by_commit.setdefault(ind.commit, ind.id)
            if len(ind.parents) == 2:
                key = frozenset(ind.parents)
                self._crossed[key] = self._crossed.get(key, 0) + 1
        self._ancestors: dict[str, frozenset[str]] = {}

    @classmethod
    def of(cls, store: Store, run: str) -> Family:
        """The run's family as it is now (one per change of the run: `evolve.snapshots`)."""
        with store.snapshots.fresh(store._query, run) as snap:
            family = snap.derived.get("family")
            if family is None:
                family = snap.derived["family"] = cls(snap.individuals.values())
            return family

    def ancestors(self, individual: str) -> frozenset[str]:
        """Every ancestor of `individual` (not itself)."""
        if individual in self._ancestors:
            return self._ancestors[individual]
        # Iterative post-order walk: lineages can be thousands deep.
        stack = [individual]
        while stack:
            node = stack[-1]
            pending = [p for p in self.parents.get(node, ()) if p not in self._ancestors]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            found: set[str] = set()
            for p in self.parents.get(node, ()):
                found.add(p)
                found |= self._ancestors[p]
            self._ancestors[node] = frozenset(found)
        return self._ancestors[individual]

    def related(self, a: str, b: str) -> bool:
        """True when `a` and `b` are the same individual or one descends from the other."""
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def crossed(self, a: str, b: str) -> int:
        """How many children `a` and `b` already have together (proposed, whatever became of them)."""
        return self._crossed.get(frozenset((a, b)), 0)

    def unrelated_pair(self, ids: Sequence[str]) -> tuple[str, str] | None:
        """The first two of `ids` (in their order) that are not ancestor and descendant, or None."""
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                if not self.related(a, b):
                    return a, b
        return None


def choose_parents(
    family: Family, members: Sequence[Member], drawn: tuple[Member, Member]
) -> tuple[Member, Member, list[Member]] | None:
    """Two parents for a crossover that are not ancestor and descendant, better first, and up to
    PARTNERS other members unrelated to the first (best first) that the crossover may take instead
    of the second. The drawn pair when it is unrelated; else a partner for either of them; else any
    unrelated pair of `members` (best first); None when no two members can be crossed. Every
    member returned lives in the drawn first's island (the child's)."""
    a, b = drawn
    here = lambda m: replace(m, island=a.island)
    pair = (a, b) if not family.related(a.id, b.id) else None
    for anchor in (a, b) if pair is None else ():
        partner = next((m for m in members if not family.related(anchor.id, m.id)), None)
        if partner is not None:
            pair = (here(anchor), here(partner))
            break
    if pair is None:
        found = family.unrelated_pair([m.id for m in members])
        if found is None:
            return None
        by_id = {m.id: here(m) for m in members}
        pair = (by_id[found[0]], by_id[found[1]])
    first, second = sorted(pair, key=lambda m: (m.score, m.id))
    others = [
        here(m) for m in members if m.id not in (first.id, second.id) and not family.related(first.id, m.id)
    ]
    return first, second, others[:PARTNERS]


# ---------------------------------------------------------------------------------------------
# What a parent changed since the common ancestor
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Changes:
    """One side's changes since the common ancestor: knobs by value, other code by region."""

    knobs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # name -> (old, new)
    regions: tuple[tuple[str, int, int], ...] = ()  # (path, first, last) lines of the ancestor, 0-based

    @property
    def empty(self) -> bool:
        return not self.knobs and not self.regions

    def overlaps(self, other: Changes) -> bool:
        """Same knob, or code regions that overlap or touch (git's merge conflicts on those)."""
        if self.knobs.keys() & other.knobs.keys():
            return True
        return any(
            p == q and a <= d + 1 and c <= b + 1 for p, a, b in self.regions for q, c, d in other.regions
        )


def _knobs(text: str) -> dict:
    try:
        return parse_hyperparams(text)
    except GenomeError:  # code that does not parse has no knobs to compare: all of it is code
        return {}


def changes(base: Files, files: Files) -> Changes:
    """What `files` changed relative to `base`: knob values (UPPER_CASE constants), code regions."""
    knobs: dict[str, tuple[str | None, str | None]] = {}
    regions: list[tuple[str, int, int]] = []
    for path in sorted(set(base) | set(files)):
        old, new = base.get(path, ""), files.get(path, "")
        if old == new:
            continue
        before, after = _knobs(old), _knobs(new)
        prefix = "" if path.endswith("train.py") else f"{path}:"
        for name in dict.fromkeys([*before, *after]):
            a, b = before.get(name), after.get(name)
            if a is None or b is None or a.value != b.value:
                knobs[prefix + name] = (a.source if a else None, b.source if b else None)
        knob_old = {k.line - 1 for k in before.values()}
        knob_new = {k.line - 1 for k in after.values()}
        matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            if set(range(i1, i2)) <= knob_old and set(range(j1, j2)) <= knob_new:
                continue  # a knob's own line: counted by value above
            regions.append((path, i1, max(i1, i2 - 1)))
    return Changes(knobs, tuple(regions))


# ---------------------------------------------------------------------------------------------
# Ranking the partners of a crossover's first parent
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    """A candidate partner for a first parent, and how well their changes complement each other."""

    partner: Parent
    base: str  # the merge-base commit
    base_id: str | None  # the individual at that commit
    first: Changes  # the first parent's changes since the base
    second: Changes  # the partner's
    both_better: bool  # both score lower than the base
    crossed: int = 0  # children the two already have together

    @property
    def disjoint(self) -> bool:
        return not self.first.overlaps(self.second)

    @property
    def tier(self) -> int:
        """0: complementary (different knobs and code, both better than the base); 1: different
        things; 2: overlapping changes."""
        return 0 if self.disjoint and self.both_better else 1 if self.disjoint else 2

    def summary(self) -> str:
        kind = ("complementary", "different changes", "overlapping changes")[self.tier]
        return f"{self.partner.id} ({kind}, common ancestor {self.base_id or self.base[:10]})"


def files_at(repo: GenomeRepo, commit: str, cache: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The mutable files at `commit` (a missing file reads as empty)."""
    if cache is not None and commit in cache:
        return cache[commit]
    out = {
        p: (data.decode() if (data := repo.read_exact(commit, p)) is not None else "") for p in repo.mutable
    }
    if cache is not None:
        cache[commit] = out
    return out


def rank_partners(ctx: ProposalContext, first: Parent, candidates: Iterable[Parent]) -> list[Match]:
    """The candidates that may be crossed with `first`, most complementary first; among equals, the
    ones crossed with it least often so far, then in the order they came.

    Dropped: the ones related to `first` (ancestor, descendant, the same code), and those where
    either side changed nothing since their common ancestor (the merge would be the other)."""
    family = Family.of(ctx.store, ctx.run)
    scores = ctx.store.scores(ctx.depth, ctx.run)
    cache: dict[str, dict[str, str]] = {}
    mine = files_at(ctx.repo, first.individual.commit, cache)
    out: list[Match] = []
    seen = {first.id}
    for cand in candidates:
        if cand.id in seen or cand.individual.commit == first.individual.commit:
            continue
        seen.add(cand.id)
        if family.related(first.id, cand.id):
            continue
        try:
            base = merge_base(ctx.repo, first.genome, cand.genome)
        except GenomeError:
            continue
        base_files = files_at(ctx.repo, base, cache)
        a, b = (
            changes(base_files, mine),
            changes(base_files, files_at(ctx.repo, cand.individual.commit, cache)),
        )
        if a.empty or b.empty:
            continue
        base_id = family.by_commit.get(base)
        base_score = scores.get(base_id) if base_id else None
        better = base_score is not None and all(
            p.score is not None and p.score.mean < base_score.mean for p in (first, cand)
        )
        out.append(Match(cand, base, base_id, a, b, better, family.crossed(first.id, cand.id)))
    return sorted(out, key=lambda m: (m.tier, m.crossed))  # stable: the draw's order among equals


def candidates(ctx: ProposalContext) -> list[Parent]:
    """Who a crossover may pair its first parent with: the drawn second, the engine's partners,
    then the elites (the ranking drops the related ones)."""
    return [*ctx.parents[1:], *ctx.partners, *ctx.elites]


# ---------------------------------------------------------------------------------------------
# What a crossover's child took from each parent
# ---------------------------------------------------------------------------------------------
def took(base: Files, sides: Sequence[tuple[str, Files]], child: Files) -> str:
    """`from gA: X=1, code (1 hunk); from gB: Y=2; new: Z=3`: each of the child's changes since the
    common ancestor, credited to the parent that has it (knobs by value, code hunks by region)."""
    mine = changes(base, child)
    theirs = [(pid, changes(base, files)) for pid, files in sides]
    credit: dict[str, list[str]] = {pid: [] for pid, _ in sides}
    own: list[str] = []
    for name, (_, new) in mine.knobs.items():
        owner = next((pid for pid, ch in theirs if name in ch.knobs and ch.knobs[name][1] == new), None)
        (credit[owner] if owner else own).append(f"{name}={new}" if new is not None else f"no {name}")
    hunks: dict[str, int] = {}
    own_hunks = 0
    for region in mine.regions:
        probe = Changes(regions=(region,))
        owners = [pid for pid, ch in theirs if probe.overlaps(Changes(regions=ch.regions))]
        for pid in owners:
            hunks[pid] = hunks.get(pid, 0) + 1
        own_hunks += not owners
    for pid, n in hunks.items():
        credit[pid].append(f"code ({n} hunk{'s' if n > 1 else ''})")
    if own_hunks:
        own.append(f"code ({own_hunks} hunk{'s' if own_hunks > 1 else ''})")
    parts = [f"from {pid}: {', '.join(items) if items else 'nothing'}" for pid, items in credit.items()]
    if own:
        parts.append(f"new: {', '.join(own)}")
    return "; ".join(parts)


__all__ = [
    "PARTNERS", "Changes", "Family", "Match", "candidates", "changes", "choose_parents", "files_at",
    "rank_partners", "took",
]  # fmt: skip
