"""A run's individuals and evaluations, read incrementally: what `Store.individuals(run)`,
`Store.evaluations(run=run)` and `evolve.judging.Evidence` start from.

The engine judges every child against the whole run (its parent's seeds, the noise of every
accepted individual) and reads the population again for each proposal. Read from scratch, that is
a query and a Python pass over every row of the run per child: at 10,000 children most of the
controller's time. Here each run keeps what was read, and each read asks only for what changed:

- evaluations are only ever appended, under one writer at a time, so their ids grow in commit
  order: rows with an id above the last one read;
- individuals change (status, decision, priority) as well as arrive: every insert and update sets
  the row's `rev` to one more than the table's highest (triggers of migration 23, whichever
  process or module writes), so rows with a `rev` above the last one read.

A write transaction that rolls back empties the cache (`clear`), since it may have read rows of
that transaction that never landed. A store without `rev` (opened read-only before migration 23)
reads everything each time.

`evolve.judging` keeps what it derives beside each run: `kept`, folded forward row by row (a
run's evaluations by individual and seed: the evaluations list only grows), and `derived`, emptied
by every change (noise models), so a decision recomputes only what a new row made stale. What
`individuals` and `evaluations` hand out is a copy: a caller that keeps it sees the run as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .records import Evaluation, Individual, _evaluation, _individual

Query = Callable[[str, Sequence[Any]], list]


@dataclass
class _Run:
    rev: int = 0  # the highest individuals.rev read
    eval_id: int = 0  # the highest evaluations.id read
    version: int = 0  # one more for every read that found a change
    individuals: dict[str, Individual] = field(default_factory=dict)  # in (created, rowid) order
    order: dict[str, tuple[float, int]] = field(default_factory=dict)
    evaluations: list[Evaluation] = field(default_factory=list)  # in id order
    kept: dict[Any, Any] = field(default_factory=dict)  # judging's, folded forward
    derived: dict[Any, Any] = field(default_factory=dict)  # judging's, for `version` only


class Snapshots:
    def __init__(self, has_rev: bool = True) -> None:
        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}
        self.has_rev = has_rev

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()

    def _fresh(self, query: Query, run: str) -> _Run:
        """The run's entry with what was written since the last read (under the lock)."""
        entry = self._runs.setdefault(run, _Run())
        if not self.has_rev:
            entry = self._runs[run] = _Run(version=entry.version)
        changed = False
        if self.has_rev:
            sql, params = (
                "SELECT rowid AS row_id, * FROM individuals WHERE run = ? AND rev > ? ORDER BY rev",
                (run, entry.rev),
            )
        else:
            sql, params = "SELECT rowid AS row_id, * FROM individuals WHERE run = ?", (run,)
        rows = query(sql, params)
        late = False  # a new row that sorts before one already held
        last = next(reversed(entry.order.values()), None)
        for r in rows:
            row = dict(r)
            row_id = row.pop("row_id")
            entry.rev = max(entry.rev, row.pop("rev", 0))
            ind = _individual(row)
            if ind.id not in entry.order:
                place = (ind.created, row_id)
                late = late or (last is not None and place < last)
                last = place if last is None or place > last else last
                entry.order[ind.id] = place
            entry.individuals[ind.id] = ind
            changed = True
        if late:
            ids = sorted(entry.order, key=entry.order.__getitem__)
            entry.order = {i: entry.order[i] for i in ids}
            entry.individuals = {i: entry.individuals[i] for i in ids}
        rows = query(
            "SELECT e.* FROM evaluations e JOIN individuals i ON i.id = e.individual"
            " WHERE i.run = ? AND e.id > ? ORDER BY e.id",
            (run, entry.eval_id),
        )
        for r in rows:
            e = _evaluation(r)
            entry.eval_id = e.id
            entry.evaluations.append(e)
            changed = True
        if changed:
            entry.version += 1
            entry.derived.clear()
        return entry

    def individuals(self, query: Query, run: str) -> list[Individual]:
        """The run's individuals in the order they were created."""
        with self._lock:
            return list(self._fresh(query, run).individuals.values())

    def evaluations(self, query: Query, run: str) -> list[Evaluation]:
        """The run's evaluations in id order."""
        with self._lock:
            return list(self._fresh(query, run).evaluations)

    @contextmanager
    def fresh(self, query: Query, run: str) -> Iterator[_Run]:
        """The run's entry, up to date, held under the lock: read it, never change its rows
        (`kept` and `derived` are the caller's to fill)."""
        with self._lock:
            yield self._fresh(query, run)
