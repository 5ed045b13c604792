"""The run's state in one SQLite file (`.evolve/evolve.db`): runs, individuals, evaluations, lineage.

Code lives in git; everything else lives here. Every state change is one transaction, so a
`kill -9` at any moment leaves either the old state or the new one, never half of a change. The
file is in WAL mode: a second process (`evolve status`, `analysis`) reads while a run writes.
Each thread gets its own connection; `Store(path, readonly=True)` opens with `mode=ro` for analysis.
The records it returns (Individual, Evaluation, ...) live in `evolve.records`, re-exported here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import storefile
from .errors import EvolveError
from .migrations import MIGRATIONS, Migration, applied_versions, migrate
from .promotion import Score
from .records import (
    _COLUMN_NAMES,
    _EVALUATION_COLUMNS,
    _TRANSITIONS,
    SEARCH_PURPOSES,
    DiskUse,
    Evaluation,
    Event,
    Individual,
    Insight,
    LineageKind,
    LLMCall,
    Purpose,
    Ranked,
    Run,
    ScoreKey,
    Status,
    _evaluation,
    _individual,
)
from .snapshots import Snapshots
from .store_llm import LLMRecords
from .tally import Tally

__all__ = [
    "BUSY_TIMEOUT_MS", "SEARCH_PURPOSES", "DiskUse", "Evaluation", "Event", "Individual", "Insight",
    "LLMCall", "LineageKind", "Purpose", "Ranked", "Run", "ScoreKey", "Status", "Store",
]  # fmt: skip

BUSY_TIMEOUT_MS = 30_000
# The `operator_stats` view of migration 1, with its subquery turned into joins (one row per child
# and search depth, as the view's LEFT JOIN on search_scores gives).
_OPERATOR_STATS = """
    WITH s AS (
        SELECT e.individual AS individual, e.depth AS depth, AVG(e.val_bpb) AS mean FROM evaluations e
        JOIN individuals i ON i.id = e.individual
        WHERE i.run = ? AND e.status = 'ok' AND e.val_bpb IS NOT NULL AND e.purpose != 'validation'
        GROUP BY e.individual, e.depth),
    best_parent AS (
        SELECT l.child AS child, ps.depth AS depth, MIN(ps.mean) AS mean FROM lineage l
        JOIN s ps ON ps.individual = l.parent GROUP BY l.child, ps.depth)
    SELECT i.operator AS operator, COUNT(*) AS children, SUM(cs.mean IS NOT NULL) AS evaluated,
        SUM(COALESCE(cs.mean < bp.mean, 0)) AS improvements,
        SUM(i.status IN ('failed', 'rejected')) AS failures
    FROM individuals i
    LEFT JOIN s cs ON cs.individual = i.id
    LEFT JOIN best_parent bp ON bp.child = i.id AND bp.depth = cs.depth
    WHERE i.run = ? AND EXISTS (SELECT 1 FROM lineage l WHERE l.child = i.id)
    GROUP BY i.operator ORDER BY i.operator"""


class Store(LLMRecords):
    """The SQLite store. Safe to share between threads; open it once per process.

    >>> store = Store(workspace / ".evolve" / "evolve.db")
    >>> with store.transaction():  # several changes that must land together
    ...     store.add_individual(...)
    ...     store.add_event(...)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._tally = Tally()  # scores read incrementally (evolve.tally)
        self.snapshots = Snapshots()  # a run's rows read incrementally (evolve.snapshots)
        self.applied: list[int] = []
        try:
            self._open_reader(migrations) if readonly else self._open_writer(migrations)
            columns = {r[1] for r in self._conn().execute("PRAGMA table_info(evaluations)")}
            self._tally = Tally(has_cpu_name="cpu_name" in columns or not columns)
            columns = {r[1] for r in self._conn().execute("PRAGMA table_info(individuals)")}
            self.snapshots = Snapshots(has_rev="rev" in columns or not columns)
        except sqlite3.Error as exc:
            self.close()
            raise storefile.describe(exc, self.path, doing="opening it") from None
        except BaseException:
            self.close()
            raise

    def _open_reader(self, migrations: Sequence[Migration]) -> None:
        if not self.path.exists():
            raise EvolveError(f"no store at {self.path}: run `evolve run` in this workspace first")
        problem = storefile.header_problem(self.path)
        if problem is not None:
            raise storefile.refusal(self.path, problem, foreign=problem == "not an SQLite database")
        conn = self._conn()
        foreign = storefile.schema_problem(conn)
        if foreign is not None:
            raise storefile.refusal(self.path, foreign, foreign=True)
        known = max((m.version for m in migrations), default=0)
        found = applied_versions(conn)
        if found and max(found) > known:
            raise EvolveError(
                f"this store has schema version {max(found)}, newer than this autoevolve knows "
                f"({known}): upgrade autoevolve"
            )

    def _open_writer(self, migrations: Sequence[Migration]) -> None:
        # Never write over what is there unless it passes every check; never start afresh
        # where backups say an evolution was.
        backups = storefile.Backups(self.path)
        if self.path.exists() and (self.path.stat().st_size > 0 or backups.list()):
            found = storefile.file_problem(self.path, full=True)
            if found is not None:
                raise storefile.refusal(self.path, *found)
        elif not self.path.exists() and (good := backups.newest_good()) is not None:
            raise storefile.missing(self.path, good)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        # WAL is a property of the file: set once, it lets readers work beside the writer.
        conn.execute("PRAGMA journal_mode=WAL")
        done = applied_versions(conn)
        if done and any(m.version not in done for m in migrations):
            backups.make("before the schema upgrade")  # a failed upgrade must not cost the data
        self.applied = migrate(conn, migrations)

    # --- connections and transactions ---

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise storefile.describe(exc, self.path, doing="opening it") from None
            self._local.conn = conn
            self._local.depth = 0
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            conn = storefile.connect_readonly(self.path, isolation_level=None, check_same_thread=False)
        else:
            # Each thread uses only its own connection; the flag lets close() end them all.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        if self.readonly:
            conn.execute("PRAGMA query_only=ON")  # a second lock on top of mode=ro
        else:
            # Durable against a killed process (not power loss), and much faster than FULL.
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: commits at the end, rolls everything back on any exception.

        Nested calls on the same thread join the outermost transaction. A sqlite3 error that
        means the store cannot be used now (full disk, read-only, locked, damaged) comes out as
        a one-line `StoreError`; nothing of the change is left behind."""
        conn = self._conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
        self._execute(conn, "BEGIN" if self.readonly else "BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
            self._execute(conn, "COMMIT")
        except BaseException as exc:
            self._tally.clear()  # it may have read rows of this change, which never landed
            self.snapshots.clear()
            if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if _unusable(exc):
                raise storefile.describe(exc, self.path) from None
            raise
        finally:
            self._local.depth = 0

    def _execute(self, conn: sqlite3.Connection, sql: str) -> None:
        try:
            conn.execute(sql)
        except sqlite3.Error as exc:
            if _unusable(exc):
                raise storefile.describe(exc, self.path) from None
            raise

    def close(self) -> None:
        """Close every thread's connection (the store is unusable afterwards)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if _unusable(exc):
                raise storefile.describe(exc, self.path) from None
            raise

    def schema_version(self) -> int:
        return max(applied_versions(self._conn()), default=0)

    # --- runs ---

    def add_run(
        self,
        name: str,
        *,
        strategy: str,
        profile: str,
        settings: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Run:
        with self.transaction() as conn:
            existing = self.get_run(name)
            if existing is not None:
                if exist_ok:
                    return existing
                raise EvolveError(f"run {name!r} already exists: resume it or pick another name")
            conn.execute(
                "INSERT INTO runs (name, settings, created, strategy, profile) VALUES (?, ?, ?, ?, ?)",
                (name, json.dumps(dict(settings or {}), sort_keys=True), time.time(), strategy, profile),
            )
            run = self.get_run(name)
        assert run is not None
        return run

    def get_run(self, name: str) -> Run | None:
        rows = self._query("SELECT * FROM runs WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return Run(r["name"], json.loads(r["settings"]), r["created"], r["strategy"], r["profile"])

    def update_run_settings(self, name: str, **values: Any) -> Run:
        """Merge `values` into a run's settings (those a resumed session may change, e.g. islands)."""
        with self.transaction() as conn:
            run = self.get_run(name)
            if run is None:
                raise EvolveError(f"no run {name!r} in this store")
            settings = {**run.settings, **values}
            conn.execute(
                "UPDATE runs SET settings = ? WHERE name = ?", (json.dumps(settings, sort_keys=True), name)
            )
        return replace(run, settings=settings)

    def runs(self) -> list[Run]:
        names = [r["name"] for r in self._query("SELECT name FROM runs ORDER BY created, name")]
        return [run for name in names if (run := self.get_run(name)) is not None]

    # --- individuals ---

    def add_individual(
        self,
        *,
        id: str,
        run: str,
        commit: str,
        parents: Sequence[str] = (),
        operator: str = "",
        description: str = "",
        branch: str = "",
        island: int = 0,
        generation: int | None = None,
        status: Status | str = Status.PROPOSED,
        code_hash: str | None = None,
        kind: LineageKind | str | None = None,
        guard_reason: str | None = None,
        priority: int = 0,
        origin: str | None = None,
    ) -> Individual:
        """Insert an individual and its lineage edges together.

        `generation` defaults to one more than the highest generation among its parents (0 for a
        root). `kind` defaults to mutation for one parent and crossover for two or more."""
        parents = tuple(parents)
        status = Status(status)
        if kind is None:
            kind = LineageKind.MUTATION if len(parents) <= 1 else LineageKind.CROSSOVER
        kind = LineageKind(kind)
        with self.transaction() as conn:
            if generation is None:
                generation = 0
                if parents:
                    marks = ",".join("?" * len(parents))
                    row = conn.execute(
                        f"SELECT MAX(generation) FROM individuals WHERE id IN ({marks})", parents
                    ).fetchone()
                    generation = 1 + (row[0] or 0)
            now = time.time()
            taken = self.get(id)
            if taken is not None:  # ids are never reused, whatever run asks
                raise EvolveError(
                    f"id {id} is taken: run {taken.run!r} recorded it at commit {taken.commit[:10]}; "
                    f"`evolve doctor` checks the branches against the store"
                )
            conn.execute(
                "INSERT INTO individuals (id, run, commit_sha, branch, parents, operator, description,"
                " island, generation, status, priority, code_hash, created, guard_reason,"
                " finished, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    id, run, commit, branch, json.dumps(list(parents)), operator, description,
                    island, generation, status.value, priority, code_hash, now, guard_reason,
                    now if status.is_finished() else None, origin or None,
                ),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO lineage (child, parent, kind) VALUES (?, ?, ?)",
                [(id, parent, kind.value) for parent in dict.fromkeys(parents)],
            )
            individual = self.get(id)
        assert individual is not None
        return individual

    def highest_id(self) -> int:
        """The highest id number the store has ever recorded (-1 when empty)."""
        row = self._query(
            "SELECT MAX(CAST(SUBSTR(id, 2) AS INTEGER)) FROM individuals WHERE id GLOB 'g[0-9][0-9][0-9][0-9]*'"
        )[0]
        return -1 if row[0] is None else int(row[0])

    def get(self, individual_id: str) -> Individual | None:
        rows = self._query("SELECT * FROM individuals WHERE id = ?", (individual_id,))
        return _individual(rows[0]) if rows else None

    def individuals(
        self,
        run: str | None = None,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        decision: str | None = None,
    ) -> list[Individual]:
        """Individuals in the order they were created, filtered by run, status(es) and decision."""
        if run is not None and status is None and decision is None:
            return self.snapshots.individuals(self._query, run)
        where, params = [], []
        if run is not None:
            where.append("run = ?")
            params.append(run)
        if status is not None:
            statuses = [status] if isinstance(status, (str, Status)) else list(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(Status(s).value for s in statuses)
        if decision is not None:
            where.append("decision = ?")
            params.append(decision)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(f"SELECT * FROM individuals {clause} ORDER BY created, rowid", params)
        return [_individual(r) for r in rows]

    def set_status(
        self,
        individual_id: str,
        status: Status | str,
        *,
        guard_reason: str | None = None,
        priority: int | None = None,
    ) -> Individual:
        """Move an individual to `status`; illegal moves (e.g. out of rejected) raise ValueError."""
        status = Status(status)
        with self.transaction() as conn:
            current = self.get(individual_id)
            if current is None:
                raise KeyError(f"no individual {individual_id!r}")
            if status != current.status and status not in _TRANSITIONS[current.status]:
                raise ValueError(f"{individual_id}: cannot go from {current.status.value} to {status.value}")
            now = time.time()
            conn.execute(
                "UPDATE individuals SET status = ?,"
                " guard_reason = COALESCE(?, guard_reason), priority = COALESCE(?, priority),"
                " started = CASE WHEN ? THEN ? ELSE started END,"
                " finished = CASE WHEN ? THEN ? WHEN ? THEN NULL ELSE finished END"
                " WHERE id = ?",
                (
                    status.value, guard_reason, priority,
                    status == Status.RUNNING, now,
                    status.is_finished(), now, status in (Status.QUEUED, Status.RUNNING),
                    individual_id,
                ),
            )  # fmt: skip
            updated = self.get(individual_id)
        assert updated is not None
        return updated

    def set_decision(self, individual_id: str, decision: str | None) -> None:
        """Record what promotion decided: 'accept' (a member of the population) or 'reject'."""
        with self.transaction() as conn:
            cur = conn.execute("UPDATE individuals SET decision = ? WHERE id = ?", (decision, individual_id))
            if cur.rowcount != 1:
                raise KeyError(f"no individual {individual_id!r}")

    def claim(self, run: str) -> Individual | None:
        """Take the next queued individual (highest priority, then oldest) and mark it running.

        Atomic: two workers never claim the same one. None when the queue is empty."""
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE individuals SET status = 'running', started = ?, finished = NULL WHERE id = ("
                " SELECT id FROM individuals WHERE run = ? AND status = 'queued'"
                " ORDER BY priority DESC, created, rowid LIMIT 1) RETURNING id",
                (time.time(), run),
            ).fetchone()
            return self.get(row[0]) if row else None

    def in_flight(self, run: str) -> list[Individual]:
        """Individuals marked running: after a crash, the work to run again."""
        return self.individuals(run, status=Status.RUNNING)

    def requeue_in_flight(self, run: str) -> list[str]:
        """Put every running individual of `run` back in the queue (on resume); returns their ids."""
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE individuals SET status = 'queued', started = NULL"
                " WHERE run = ? AND status = 'running' RETURNING id",
                (run,),
            ).fetchall()
        return sorted(r[0] for r in rows)

    def children_counts(self, run: str | None = None) -> dict[str, int]:
        """How many children (of any status) each individual has."""
        sql = "SELECT l.parent, COUNT(*) FROM lineage l JOIN individuals c ON c.id = l.child"
        rows = self._query(
            sql + (" WHERE c.run = ? GROUP BY l.parent" if run else " GROUP BY l.parent"),
            (run,) if run else (),
        )
        return {r[0]: r[1] for r in rows}

    def lineage(self, individual_id: str) -> list[tuple[str, str]]:
        """The (parent, kind) edges into one individual."""
        rows = self._query(
            "SELECT parent, kind FROM lineage WHERE child = ? ORDER BY rowid", (individual_id,)
        )
        return [(r[0], r[1]) for r in rows]

    def find_by_code_hash(
        self,
        code_hash: str,
        run: str | None = None,
        statuses: Iterable[Status | str] = (Status.EVALUATED,),
    ) -> Individual | None:
        """The first individual with this normalized code hash (by default, only evaluated ones)."""
        statuses = [Status(s).value for s in statuses]
        sql = f"SELECT * FROM individuals WHERE code_hash = ? AND status IN ({','.join('?' * len(statuses))})"
        params: list[Any] = [code_hash, *statuses]
        if run is not None:
            sql += " AND run = ?"
            params.append(run)
        rows = self._query(sql + " ORDER BY created, rowid LIMIT 1", params)
        return _individual(rows[0]) if rows else None

    # --- evaluations ---

    def record_evaluation(self, evaluation: Evaluation) -> bool:
        """Store one evaluation and, for search-depth runs, the individual's resulting status.

        Idempotent: the same (individual, depth, seed, purpose) recorded again changes nothing and
        returns False. The individual becomes evaluated if it has any ok search-depth evaluation,
        else failed; a validation run leaves its status alone."""
        e = evaluation
        with self.transaction() as conn:
            row = {_COLUMN_NAMES.get(name, name): getattr(e, name) for name in _EVALUATION_COLUMNS}
            row.update(
                purpose=Purpose(e.purpose).value,
                metrics=json.dumps(e.metrics, sort_keys=True, default=str),
                created=e.created or time.time(),
            )
            cur = conn.execute(
                f"INSERT INTO evaluations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
                " ON CONFLICT (individual, depth, seed, purpose) DO NOTHING",
                tuple(row.values()),
            )
            if cur.rowcount == 0:
                return False
            if Purpose(e.purpose) != Purpose.VALIDATION:
                marks = ",".join("?" * len(SEARCH_PURPOSES))
                conn.execute(
                    "UPDATE individuals SET finished = ?, status = CASE WHEN EXISTS ("
                    " SELECT 1 FROM evaluations WHERE individual = ? AND status = 'ok'"
                    f" AND val_bpb IS NOT NULL AND purpose IN ({marks}))"
                    " THEN 'evaluated' ELSE 'failed' END WHERE id = ?",
                    (time.time(), e.individual, *(p.value for p in SEARCH_PURPOSES), e.individual),
                )
        return True

    def unisolated(self, run: str) -> int:
        """How many of the run's evaluations ran without isolation (EVOLVE_ISOLATION=none)."""
        rows = self._query(
            "SELECT COUNT(*) FROM evaluations e JOIN individuals i ON i.id = e.individual"
            " WHERE i.run = ? AND e.isolation = 'none'",
            (run,),
        )
        return int(rows[0][0])

    def evaluations(
        self,
        individual: str | None = None,
        *,
        run: str | None = None,
        purpose: Purpose | str | None = None,
    ) -> list[Evaluation]:
        if run is not None and individual is None and purpose is None:
            return self.snapshots.evaluations(self._query, run)
        where, params = [], []
        if individual is not None:
            where.append("e.individual = ?")
            params.append(individual)
        if run is not None:
            where.append("i.run = ?")
            params.append(run)
        if purpose is not None:
            where.append("e.purpose = ?")
            params.append(Purpose(purpose).value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT e.* FROM evaluations e JOIN individuals i ON i.id = e.individual {clause} ORDER BY e.id",
            params,
        )
        return [_evaluation(r) for r in rows]

    def seeds_used(self, individual: str, depth: int) -> list[int]:
        rows = self._query(
            "SELECT DISTINCT seed FROM evaluations WHERE individual = ? AND depth = ? ORDER BY seed",
            (individual, depth),
        )
        return [r[0] for r in rows]

    def values(
        self,
        depth: int,
        run: str | None = None,
        purposes: Iterable[Purpose | str] = SEARCH_PURPOSES,
    ) -> dict[str, list[float]]:
        """val_bpb of every ok evaluation at `depth` under its `score_key`, per individual, in
        recording order."""
        return self._tally.values(self._query, depth, run, [Purpose(p).value for p in purposes])

    def noise_floor(self, depth: int, run: str | None = None) -> float | None:
        """The pooled seed-to-seed std over every individual with >= 2 ok runs at `depth`."""
        return self._tally.noise_floor(self._query, depth, run, [p.value for p in SEARCH_PURPOSES])

    def scores(
        self, depth: int, run: str | None = None, purposes: Iterable[Purpose | str] = SEARCH_PURPOSES
    ) -> dict[str, Score]:
        """Mean, spread and count of the ok evaluations at `depth`, per individual."""
        return self._tally.scores(self._query, depth, run, [Purpose(p).value for p in purposes])

    def score_key(
        self, depth: int, run: str | None = None, purposes: Iterable[Purpose | str] = SEARCH_PURPOSES
    ) -> ScoreKey | None:
        """The comparability key of the scores at `depth` (`values`, `scores`, `noise_floor`,
        `leaderboard` and the judge read only evaluations it admits): the key of the first ok
        evaluation there (a run's baseline's first seed); None before there is one."""
        return self._tally.key(self._query, depth, run, [Purpose(p).value for p in purposes])

    def set_aside(
        self, depth: int, run: str | None = None, purposes: Iterable[Purpose | str] = SEARCH_PURPOSES
    ) -> dict[ScoreKey, int]:
        """Ok evaluations at `depth` left out of the scores because their key differs, by key."""
        return self._tally.aside(self._query, depth, run, [Purpose(p).value for p in purposes])

    def leaderboard(
        self, depth: int, run: str | None = None, *, limit: int | None = 10, accepted_only: bool = False
    ) -> list[Ranked]:
        """Individuals by mean val_bpb at `depth`, best first (ties: more seeds first)."""
        scores = self.scores(depth, run)
        ranked = sorted(scores.items(), key=lambda kv: (kv[1].mean, -kv[1].n, kv[0]))
        out = []
        for ind_id, score in ranked:
            ind = self.get(ind_id)
            if ind is None or (accepted_only and ind.decision != "accept"):
                continue
            out.append(Ranked(ind, score))
            if limit is not None and len(out) >= limit:
                break
        return out

    def operator_stats(self, run: str) -> dict[str, dict[str, int]]:
        """Per operator: children, evaluated, improvements (beat their best parent), failures.

        The same numbers as the schema's `operator_stats` view, but its correlated subquery
        re-groups every evaluation once per child (quadratic: 17 s at 5,000 individuals); here
        the scores and each child's best parent are grouped once."""
        rows = self._query(_OPERATOR_STATS, (run, run))
        return {
            r["operator"]: {k: int(r[k] or 0) for k in ("children", "evaluated", "improvements", "failures")}
            for r in rows
        }

    # --- events (LLM calls and meta-insights: see LLMRecords) ---

    def add_event(self, kind: str, payload: Mapping[str, Any] | None = None, run: str | None = None) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO events (time, run, kind, payload) VALUES (?, ?, ?, ?)",
                (time.time(), run, kind, json.dumps(dict(payload or {}), sort_keys=True, default=str)),
            )
            return int(cur.lastrowid or 0)

    def events(
        self,
        run: str | None = None,
        *,
        kind: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
        last: int | None = None,
    ) -> list[Event]:
        """Events oldest first; `after_id` lets a live view read only what is new, `last` keeps
        only the newest ones (read as such: a long run has many)."""
        where, params = ["id > ?"], [after_id]
        if run is not None:
            where.append("run = ?")
            params.append(run)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        order = "id DESC" if last is not None else "id"
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY {order}"
        if limit is not None or last is not None:
            sql += f" LIMIT {int(last if last is not None else limit)}"
        rows = self._query(sql, params)
        events = [Event(r["id"], r["time"], r["run"], r["kind"], json.loads(r["payload"])) for r in rows]
        return events[::-1] if last is not None else events

    # --- housekeeping ---

    def disk_use(self) -> DiskUse:
        """Bytes used by the database files and by the training logs it points to."""
        db = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                db += p.stat().st_size
        log_bytes = files = 0
        for (log_path,) in self._query(
            "SELECT DISTINCT log_path FROM evaluations WHERE log_path IS NOT NULL"
        ):
            p = Path(log_path)
            if p.is_file():
                log_bytes += p.stat().st_size
                files += 1
        return DiskUse(db, log_bytes, files)


def _unusable(exc: BaseException) -> bool:
    """A sqlite3 error about the store's state (full, read-only, locked, damaged), not a constraint
    or a programming error, which stay what they are."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError
