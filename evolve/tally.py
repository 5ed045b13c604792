"""The store's running tally of scores: what `Store.values`, `scores` and `noise_floor` return,
read incrementally.

The engine asks for every individual's scores several times per child (to draw parents, to
decide, for the noise floor). Read from scratch each time, that is a query and a Python pass over
every evaluation of the run: the cost of one child grows with the run, and a run of 10,000
children spends most of its controller time re-reading what it already knew. Evaluations are only
ever appended, under one writer at a time (so their ids grow in commit order); the tally keeps,
per (depth, run, purposes), the values read so far and the id of the last one, and reads only the
newer rows. A write transaction that rolls back empties it (`clear`), since it may have read rows
that never landed.

Scores never mix comparability keys (`evolve.records.ScoreKey`: depth, budget, its unit and, for a
time budget, the device model). The first ok evaluation an entry reads (the lowest id: for a run's
search depth, its baseline's first seed) fixes the entry's key; later rows under a key it does not
admit are left out of the values, scores and noise floor, and counted in `aside`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .promotion import Score, pooled_std
from .records import ScoreKey

Query = Callable[[str, Sequence[Any]], list]
_UNSET = object()


@dataclass
class _Entry:
    last_id: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)
    scores: dict[str, Score] = field(default_factory=dict)
    floor: Any = _UNSET
    key: ScoreKey | None = None  # the first ok row's: every value kept is under it
    aside: dict[ScoreKey, int] = field(default_factory=dict)  # rows left out, by their key


class Tally:
    def __init__(self, has_cpu_name: bool = True) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, _Entry] = {}
        # a store opened read-only before migration 22 has no cpu_name: read as unknown
        self._cpu_name = "e.cpu_name" if has_cpu_name else "''"

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _fresh(self, query: Query, depth: int, run: str | None, purposes: Sequence[str]) -> _Entry:
        """The entry of (depth, run, purposes), with the evaluations recorded since the last read."""
        key = (depth, run, tuple(sorted(purposes)))
        sql = (
            "SELECT e.id, e.individual, e.val_bpb, e.depth, e.budget, e.budget_unit, e.gpu_name,"
            f" {self._cpu_name} FROM evaluations e JOIN individuals i ON i.id = e.individual"
            " WHERE e.status = 'ok' AND e.val_bpb IS NOT NULL AND e.depth = ? AND e.id > ?"
            f" AND e.purpose IN ({','.join('?' * len(purposes))})"
        )
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            params: list[Any] = [depth, entry.last_id, *purposes]
            if run is not None:
                sql += " AND i.run = ?"
                params.append(run)
            changed = set()
            for r in query(sql + " ORDER BY e.id", params):
                entry.last_id = max(entry.last_id, r[0])
                key = ScoreKey.of(*r[3:8])
                if entry.key is None:
                    entry.key = key
                if not entry.key.admits(key):
                    entry.aside[key] = entry.aside.get(key, 0) + 1
                    continue
                entry.values.setdefault(r[1], []).append(r[2])
                changed.add(r[1])
            for ind in changed:
                entry.scores[ind] = Score.of(entry.values[ind])
            if changed:
                entry.floor = _UNSET
            return entry

    def values(
        self, query: Query, depth: int, run: str | None, purposes: Sequence[str]
    ) -> dict[str, list[float]]:
        entry = self._fresh(query, depth, run, purposes)
        with self._lock:
            return {k: list(v) for k, v in entry.values.items()}

    def scores(self, query: Query, depth: int, run: str | None, purposes: Sequence[str]) -> dict[str, Score]:
        entry = self._fresh(query, depth, run, purposes)
        with self._lock:
            return dict(entry.scores)

    def noise_floor(self, query: Query, depth: int, run: str | None, purposes: Sequence[str]) -> float | None:
        entry = self._fresh(query, depth, run, purposes)
        with self._lock:
            if entry.floor is _UNSET:
                entry.floor = pooled_std(entry.values.values())
            return entry.floor

    def key(self, query: Query, depth: int, run: str | None, purposes: Sequence[str]) -> ScoreKey | None:
        """The key every score of (depth, run, purposes) is under; None before the first ok run."""
        entry = self._fresh(query, depth, run, purposes)
        with self._lock:
            return entry.key

    def aside(
        self, query: Query, depth: int, run: str | None, purposes: Sequence[str]
    ) -> dict[ScoreKey, int]:
        """The ok evaluations left out of the scores because their key differs, by key."""
        entry = self._fresh(query, depth, run, purposes)
        with self._lock:
            return dict(entry.aside)
