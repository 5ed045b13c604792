"""Who may become a parent: islands with rank-based selection, elites and migration, or a ratchet.

Two strategies share one interface so the scheduler switches by name (`make_strategy`):

- `population`: islands (default 4), each a set of members that promotion accepted. A parent is
  drawn in an island with probability proportional to rank^-alpha / (1 + children / k): biased
  towards the best, but not only the best, and away from parents that already have many children.
  Every `migrate_every` evaluations each island's best is copied into the next island (a ring).
- `ratchet`: autoresearch's loop. One chain: the parent is always the last kept individual; a
  child is kept when promotion accepts it and it beats the current one, otherwise the chain goes
  back to the last kept. Nothing else is remembered.

Lower scores are better. A member's score is the bound it is ranked by
(`evolve.promotion.pessimistic`: its mean val_bpb plus a confidence margin that shrinks with its
seeds), not its mean, so a lucky mean on two seeds does not rank first; `Member.mean` is the mean.
Draws use a seeded `random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import EvolveError

if TYPE_CHECKING:
    from .judging import Evidence
    from .promotion import PromotionPolicy
    from .store import Store

MIGRATION_EVENT = "migration"


@dataclass(frozen=True)
class Member:
    """An individual that may be chosen as a parent, with the score it is ranked by (its bound)."""

    id: str
    score: float
    island: int = 0
    n: int = 1
    spread: float = 0.0
    children: int = 0  # children it already had when it was loaded
    generation: int = 0
    parents: tuple[str, ...] = ()
    description: str = ""
    mean: float | None = None  # its mean val_bpb (None: same as score)

    @property
    def is_root(self) -> bool:
        return not self.parents


@dataclass(frozen=True)
class Migration:
    """A copy of `member` from island `source` into island `target` (record it as an event)."""

    member: str
    source: int
    target: int


def parent_weights(
    members: Sequence[Member], children: dict[str, int], *, alpha: float, penalty_k: float
) -> list[float]:
    """Selection weight of each member: rank^-alpha / (1 + children / penalty_k), rank 1 = best.

    Ties in score share the better rank's order by id, so the weights do not depend on input order."""
    order = sorted(range(len(members)), key=lambda i: (members[i].score, members[i].id))
    weights = [0.0] * len(members)
    for rank, i in enumerate(order, start=1):
        weights[i] = rank**-alpha / (1.0 + children.get(members[i].id, 0) / penalty_k)
    return weights


class Strategy(ABC):
    """How parents are chosen and how evaluated children change the population."""

    name: str

    @abstractmethod
    def add(self, member: Member) -> None:
        """Put a member in (the baseline at the start, or members restored on resume)."""

    @abstractmethod
    def select_parent(self, island: int | None = None) -> Member:
        """One parent for a mutation. Counts a child for it: the child is in flight from now."""

    @abstractmethod
    def select_pair(self, island: int | None = None) -> tuple[Member, Member] | None:
        """Two distinct parents for a crossover, or None when the strategy has no two to offer."""

    @abstractmethod
    def on_evaluated(self, child: Member, accepted: bool) -> list[Migration]:
        """Tell the strategy promotion's verdict on a child; returns migrations that happened."""

    @abstractmethod
    def members(self, island: int | None = None) -> list[Member]:
        """Current members, best first (of one island, or all without duplicates)."""

    def best(self) -> Member | None:
        members = self.members()
        return members[0] if members else None

    def refresh(self, members: Iterable[Member]) -> None:
        """New scores for members already in (they gathered seeds, the noise model moved); others
        are ignored."""
        for member in members:
            self._update(member)

    @abstractmethod
    def _update(self, member: Member) -> None:
        """Replace the record of `member` where it is a member; nothing when it is not."""

    def elites(self, k: int = 3, island: int | None = None) -> list[Member]:
        """The top-k members of an island, or overall."""
        return self.members(island)[:k]

    def __len__(self) -> int:
        return len(self.members())


def _ranked(members: Iterable[Member]) -> list[Member]:
    return sorted(members, key=lambda m: (m.score, m.id))


class Population(Strategy):
    """Islands of accepted members with rank-based, child-penalized parent selection."""

    name = "population"

    def __init__(
        self,
        islands: int = 4,
        *,
        alpha: float = 1.0,
        penalty_k: float = 4.0,
        migrate_every: int = 20,
        seed: int = 0,
        members: Iterable[Member] = (),
    ) -> None:
        if islands < 1:
            raise ValueError("a population needs at least one island")
        if migrate_every < 1 or penalty_k <= 0 or alpha < 0:
            raise ValueError("migrate_every must be >= 1, penalty_k > 0 and alpha >= 0")
        self.n_islands = islands
        self.alpha = alpha
        self.penalty_k = penalty_k
        self.migrate_every = migrate_every
        self.rng = random.Random(seed)
        self.evaluations = 0  # evaluations seen, for the migration period
        self._islands: list[dict[str, Member]] = [{} for _ in range(islands)]
        self._children: Counter[str] = Counter()
        self._next_island = 0
        for member in members:
            self.add(member)

    # --- membership ---

    def add(self, member: Member) -> None:
        """A root (no parents, e.g. the baseline) seeds every island; others live in their island.

        Adding a member again updates its score wherever it lives."""
        if not 0 <= member.island < self.n_islands and not member.is_root:
            raise ValueError(f"{member.id}: island {member.island} not in 0..{self.n_islands - 1}")
        if member.id not in self._children:
            self._children[member.id] = member.children
        present = [i for i, isl in enumerate(self._islands) if member.id in isl]
        targets = present or (range(self.n_islands) if member.is_root else [member.island])
        for i in targets:
            self._islands[i][member.id] = member

    def _update(self, member: Member) -> None:
        for isl in self._islands:
            if member.id in isl:
                isl[member.id] = replace(member, island=isl[member.id].island)

    def place(self, member_id: str, island: int) -> bool:
        """Copy an existing member into `island` (replaying a recorded migration). False if unknown."""
        for isl in self._islands:
            if member_id in isl:
                self._islands[island][member_id] = isl[member_id]
                return True
        return False

    def members(self, island: int | None = None) -> list[Member]:
        if island is not None:
            return _ranked(self._islands[island].values())
        unique: dict[str, Member] = {}
        for isl in self._islands:
            unique.update(isl)
        return _ranked(unique.values())

    def children(self, member_id: str) -> int:
        return self._children[member_id]

    # --- selection ---

    def _pick_island(self, island: int | None) -> int:
        if island is not None:
            if not self._islands[island]:
                raise EvolveError(f"island {island} is empty: evaluate the baseline first")
            return island
        # Round-robin, so that every island gets the same share of children.
        for step in range(self.n_islands):
            candidate = (self._next_island + step) % self.n_islands
            if self._islands[candidate]:
                self._next_island = (candidate + 1) % self.n_islands
                return candidate
        raise EvolveError("the population is empty: evaluate the baseline first")

    def _draw(self, candidates: Sequence[Member]) -> Member:
        weights = parent_weights(candidates, self._children, alpha=self.alpha, penalty_k=self.penalty_k)
        chosen = self.rng.choices(candidates, weights=weights, k=1)[0]
        self._children[chosen.id] += 1
        return chosen

    def probabilities(self, island: int) -> dict[str, float]:
        """The chance of each member of `island` to be the next parent drawn there."""
        members = self.members(island)
        weights = parent_weights(members, self._children, alpha=self.alpha, penalty_k=self.penalty_k)
        total = sum(weights)
        return {m.id: w / total for m, w in zip(members, weights, strict=True)}

    def select_parent(self, island: int | None = None) -> Member:
        """A parent drawn in `island` (default: the next island in turn); its child belongs there."""
        chosen_island = self._pick_island(island)
        return replace(self._draw(self.members(chosen_island)), island=chosen_island)

    def select_pair(self, island: int | None = None) -> tuple[Member, Member] | None:
        """Two distinct parents from one island; the second comes from the whole population when
        the island has only one member. None when the population has fewer than two members."""
        if len(self.members()) < 2:
            return None
        chosen_island = self._pick_island(island)
        first = self._draw(self.members(chosen_island))
        others = [m for m in self.members(chosen_island) if m.id != first.id]
        if not others:
            others = [m for m in self.members() if m.id != first.id]
        second = self._draw(others)
        return replace(first, island=chosen_island), replace(second, island=chosen_island)

    # --- evaluation and migration ---

    def on_evaluated(self, child: Member, accepted: bool) -> list[Migration]:
        if accepted:
            self.add(child)
        self.evaluations += 1
        if self.n_islands > 1 and self.evaluations % self.migrate_every == 0:
            return self.migrate()
        return []

    def migrate(self) -> list[Migration]:
        """Copy each island's best into the next island (ring), from a snapshot of the bests."""
        bests = [self.members(i)[0] if self._islands[i] else None for i in range(self.n_islands)]
        moves = []
        for source, best in enumerate(bests):
            target = (source + 1) % self.n_islands
            if best is not None and best.id not in self._islands[target]:
                self._islands[target][best.id] = best
                moves.append(Migration(best.id, source, target))
        return moves


class Ratchet(Strategy):
    """autoresearch's chain: always mutate the last kept; keep a child only if it is better."""

    name = "ratchet"

    def __init__(self, *, seed: int = 0, members: Iterable[Member] = (), **_ignored: object) -> None:
        self.rng = random.Random(seed)  # unused by the chain; kept for a uniform constructor
        self.current: Member | None = None
        self.kept: list[Member] = []
        self._children: Counter[str] = Counter()
        for member in members:
            self.add(member)

    def add(self, member: Member) -> None:
        """Keep `member` if the chain is empty, if it is a child of the current one (promotion found
        it better than its parent), or if it ranks better; the same id again updates its score."""
        self._children.setdefault(member.id, member.children)
        if self.current is not None and member.id == self.current.id:
            self.current = self.kept[-1] = replace(member, island=0)
        elif self.current is None or self.current.id in member.parents or member.score < self.current.score:
            self.current = replace(member, island=0)
            self.kept.append(self.current)

    def _update(self, member: Member) -> None:
        if self.current is not None and member.id == self.current.id:
            self.current = self.kept[-1] = replace(member, island=0)

    def select_parent(self, island: int | None = None) -> Member:
        if self.current is None:
            raise EvolveError("the chain is empty: evaluate the baseline first")
        self._children[self.current.id] += 1
        return self.current

    def select_pair(self, island: int | None = None) -> tuple[Member, Member] | None:
        return None  # a chain has no crossover

    def on_evaluated(self, child: Member, accepted: bool) -> list[Migration]:
        # Accepted: the test found it better than its parent, and the chain moves on when that parent
        # is the current one. With several devices two children of one parent may both be accepted:
        # the second replaces the first only if it ranks better.
        if accepted:
            self.add(child)
        return []

    def members(self, island: int | None = None) -> list[Member]:
        return [self.current] if self.current is not None else []

    def children(self, member_id: str) -> int:
        return self._children[member_id]


STRATEGIES: dict[str, type[Strategy]] = {"population": Population, "ratchet": Ratchet}


def make_strategy(name: str, **options: object) -> Strategy:
    """The strategy called `name` ('population' or 'ratchet') with its options."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise EvolveError(f"unknown strategy {name!r}: use one of {', '.join(sorted(STRATEGIES))}")
    return cls(**options)  # type: ignore[arg-type]


def member_of(ev: Evidence, individual: str, policy: PromotionPolicy) -> Member | None:
    """The member record of an individual: ranked by its bound, with its mean, seeds and spread."""
    score = ev.score(individual)
    ind = ev.individuals.get(individual)
    if score is None or ind is None:
        return None
    bound = ev.bound(individual, policy)
    return Member(
        id=ind.id,
        score=bound if bound is not None else score.mean,
        island=ind.island,
        n=score.n,
        spread=score.std,
        generation=ind.generation,
        parents=ind.parents,
        description=ind.description,
        mean=score.mean,
    )


def members_from_store(
    store: Store, run: str, depth: int, policy: PromotionPolicy | None = None
) -> list[Member]:
    """Accepted individuals of `run` with an ok score at `depth`, in the order they were created."""
    from .judging import Evidence
    from .promotion import PromotionPolicy

    ev = Evidence(store, run, depth)
    policy = policy or PromotionPolicy()
    children = store.children_counts(run)
    out = []
    for ind_id in ev.accepted():
        member = member_of(ev, ind_id, policy)
        if member is not None:
            out.append(replace(member, children=children.get(ind_id, 0)))
    return out


def from_store(
    store: Store,
    run: str,
    depth: int,
    strategy: str = "population",
    policy: PromotionPolicy | None = None,
    **options: object,
) -> Strategy:
    """Rebuild a strategy on resume: its accepted members, children counts and past migrations.

    A run resumed with fewer islands folds the old islands onto the new ones (island % islands)."""
    built = make_strategy(strategy, **options)
    for member in members_from_store(store, run, depth, policy):
        if isinstance(built, Population):
            member = replace(member, island=member.island % built.n_islands)
        built.add(member)
    if isinstance(built, Population):
        for event in store.events(run, kind=MIGRATION_EVENT):
            target = int(event.payload["target"])
            if 0 <= target < built.n_islands:
                built.place(str(event.payload["member"]), target)
        decided = [i for i in store.individuals(run) if i.decision is not None and i.parents]
        built.evaluations = len(decided)
    return built
