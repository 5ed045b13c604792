"""Confirming a champion on fresh seeds: the `confirmations` table and its rules.

The best elite by its bound is the best of many noisy means, so its own mean flatters it (the
winner's curse). Before it is called the champion, the engine runs it on `confirm_seeds` seeds it
has never been scored on (the seeds after the last one it had when confirmation started) and
keeps the mean over those seeds alone: that mean was never used to pick it, so it is an honest
estimate, and it is the score the champion is reported with (`evolve export champion`,
`evolve status`, `analysis`).

A row is `pending` until every fresh seed has a run (the individual's runs come in by seed order,
whatever asked for them: a child's pairing can use them too), then `confirmed` when all of them
are ok, or `failed` when one is not (a champion must run cleanly). One individual is confirmed
at most once per depth; one confirmation is pending at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .promotion import Score
from .store import Store

TABLE = "confirmations"
PENDING, CONFIRMED, FAILED = "pending", "confirmed", "failed"


@dataclass(frozen=True)
class Confirmation:
    run: str
    individual: str
    depth: int
    first_seed: int
    seeds: int
    status: str
    mean: float | None
    std: float | None
    n: int
    reason: str

    @property
    def fresh(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)

    @property
    def seed_text(self) -> str:
        last = self.first_seed + self.seeds - 1
        return f"{self.first_seed}-{last}" if self.seeds > 1 else str(self.first_seed)

    def score(self) -> Score | None:
        if self.mean is None:
            return None
        return Score(self.mean, self.std or 0.0, self.n)


def has_table(store: Store) -> bool:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
    return row is not None


def _row(r) -> Confirmation:
    return Confirmation(r["run"], r["individual"], r["depth"], r["first_seed"], r["seeds"], r["status"],
                        r["mean"], r["std"], r["n"], r["reason"])  # fmt: skip


def confirmations(store: Store, run: str, depth: int, status: str | None = None) -> list[Confirmation]:
    """The run's confirmations at `depth`, oldest first (none for a store from before them)."""
    if not has_table(store):
        return []
    sql = f"SELECT * FROM {TABLE} WHERE run = ? AND depth = ?"
    params: list = [run, depth]
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    with store.transaction() as conn:
        rows = conn.execute(sql + " ORDER BY started, rowid", params).fetchall()
    return [_row(r) for r in rows]


def get(store: Store, individual: str, depth: int) -> Confirmation | None:
    if not has_table(store):
        return None
    with store.transaction() as conn:
        r = conn.execute(
            f"SELECT * FROM {TABLE} WHERE individual = ? AND depth = ?", (individual, depth)
        ).fetchone()
    return _row(r) if r else None


def start(store: Store, run: str, individual: str, depth: int, first_seed: int, seeds: int) -> Confirmation:
    with store.transaction() as conn:
        conn.execute(
            f"INSERT INTO {TABLE} (run, individual, depth, first_seed, seeds, status, started)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run, individual, depth, first_seed, seeds, PENDING, time.time()),
        )
    found = get(store, individual, depth)
    assert found is not None
    return found


def settle(
    store: Store, c: Confirmation, runs: dict[int, float | None], statuses: dict[int, str]
) -> Confirmation:
    """Finish a pending confirmation when every fresh seed has a run (`runs`: seed -> val_bpb or
    None for a failed run); returns it unchanged while some are missing."""
    if c.status != PENDING or any(s not in runs for s in c.fresh):
        return c
    values = [runs[s] for s in c.fresh]
    ok = [float(v) for v in values if v is not None]
    bad = [s for s in c.fresh if runs[s] is None]
    score = Score.of(ok) if ok else None
    if bad:
        status, reason = FAILED, f"seed {bad[0]} {statuses.get(bad[0], 'failed')} on its fresh seeds"
    else:
        status, reason = CONFIRMED, f"mean over fresh seeds {c.seed_text}"
    with store.transaction() as conn:
        conn.execute(
            f"UPDATE {TABLE} SET status = ?, mean = ?, std = ?, n = ?, reason = ?, finished = ?"
            " WHERE individual = ? AND depth = ?",
            (status, score.mean if score else None, score.std if score else None, len(ok), reason, time.time(),
             c.individual, c.depth),
        )  # fmt: skip
    found = get(store, c.individual, c.depth)
    assert found is not None
    return found


def fresh_mean(values: dict[int, float | None], c: Confirmation) -> float | None:
    """The mean over the fresh seeds alone (what `settle` stores), from the runs by seed."""
    ok = [float(v) for s, v in values.items() if s in c.fresh and v is not None]
    return math.fsum(ok) / len(ok) if ok else None
