"""The store's schema, as numbered migrations recorded in a `migrations` table.

A migration is a function of one connection. `migrate` applies, in order and each in its own
transaction together with its row in `migrations`, every migration whose version the database
has not seen yet, so re-opening a store is a no-op and a crash mid-migration leaves the previous
version intact. Never edit a released migration: add the next number.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import EvolveError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _v1_schema(conn: sqlite3.Connection) -> None:
    # Statements one by one: executescript() would commit the surrounding transaction.
    for statement in _V1:
        conn.execute(statement)


_V1 = (
    """CREATE TABLE runs (
        name TEXT PRIMARY KEY,
        settings TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        strategy TEXT NOT NULL,
        profile TEXT NOT NULL
    )""",
    """CREATE TABLE individuals (
        id TEXT PRIMARY KEY,
        run TEXT NOT NULL REFERENCES runs(name),
        commit_sha TEXT NOT NULL,
        branch TEXT NOT NULL DEFAULT '',
        parents TEXT NOT NULL DEFAULT '[]',
        operator TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        island INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'proposed' CHECK (status IN
            ('proposed', 'queued', 'running', 'evaluated', 'rejected', 'failed')),
        priority INTEGER NOT NULL DEFAULT 0,
        decision TEXT CHECK (decision IS NULL OR decision IN ('accept', 'reject')),
        code_hash TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        guard_reason TEXT
    )""",
    "CREATE INDEX individuals_run_status ON individuals(run, status)",
    "CREATE INDEX individuals_code_hash ON individuals(code_hash)",
    """CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        individual TEXT NOT NULL REFERENCES individuals(id),
        depth INTEGER NOT NULL,
        budget REAL NOT NULL,
        seed INTEGER NOT NULL,
        profile TEXT NOT NULL,
        data_fingerprint TEXT NOT NULL DEFAULT '',
        device TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        val_bpb REAL,
        metrics TEXT NOT NULL DEFAULT '{}',
        wall_seconds REAL,
        training_seconds REAL,
        torch_version TEXT NOT NULL DEFAULT '',
        gpu_name TEXT NOT NULL DEFAULT '',
        log_path TEXT,
        error_tail TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        purpose TEXT NOT NULL CHECK (purpose IN ('search', 'reeval', 'baseline', 'validation')),
        created REAL NOT NULL,
        -- resume after a crash may report the same run twice: it is one row
        UNIQUE (individual, depth, seed, purpose)
    )""",
    """CREATE TABLE lineage (
        child TEXT NOT NULL REFERENCES individuals(id),
        parent TEXT NOT NULL REFERENCES individuals(id),
        kind TEXT NOT NULL CHECK (kind IN ('mutation', 'crossover', 'merge')),
        PRIMARY KEY (child, parent)
    )""",
    "CREATE INDEX lineage_parent ON lineage(parent)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        run TEXT,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX events_run_kind ON events(run, kind)",
    """CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        run TEXT,
        model TEXT NOT NULL,
        operator TEXT NOT NULL DEFAULT '',
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        latency REAL NOT NULL DEFAULT 0,
        ok INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE meta_insights (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        run TEXT,
        text TEXT NOT NULL
    )""",
    # Mean of the ok search-depth evaluations (validation runs at another depth and budget).
    """CREATE VIEW search_scores AS
        SELECT e.individual AS individual, e.depth AS depth, COUNT(*) AS n, AVG(e.val_bpb) AS mean
        FROM evaluations e
        WHERE e.status = 'ok' AND e.val_bpb IS NOT NULL AND e.purpose != 'validation'
        GROUP BY e.individual, e.depth""",
    # An operator's credit: children that beat their best parent at the same depth.
    """CREATE VIEW operator_stats AS
        SELECT i.run AS run, i.operator AS operator,
            COUNT(*) AS children,
            SUM(s.mean IS NOT NULL) AS evaluated,
            SUM(COALESCE(s.mean < (
                SELECT MIN(ps.mean) FROM lineage l
                JOIN search_scores ps ON ps.individual = l.parent AND ps.depth = s.depth
                WHERE l.child = i.id), 0)) AS improvements,
            SUM(i.status IN ('failed', 'rejected')) AS failures
        FROM individuals i LEFT JOIN search_scores s ON s.individual = i.id
        WHERE EXISTS (SELECT 1 FROM lineage l WHERE l.child = i.id)
        GROUP BY i.run, i.operator""",
)


def _v2_sessions(conn: sqlite3.Connection) -> None:
    # One row per `evolve run` process: the devices it held and how busy they were, for the
    # duty cycle (training seconds / device-held seconds). Updated in place while it runs, so a
    # killed session keeps its last update.
    conn.execute(
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run TEXT NOT NULL REFERENCES runs(name),
            pid INTEGER NOT NULL,
            devices TEXT NOT NULL DEFAULT '',
            slots INTEGER NOT NULL,
            started REAL NOT NULL,
            updated REAL NOT NULL,
            ended REAL,
            stop_reason TEXT NOT NULL DEFAULT '',
            held_seconds REAL NOT NULL DEFAULT 0,
            busy_seconds REAL NOT NULL DEFAULT 0,
            training_seconds REAL NOT NULL DEFAULT 0,
            evaluations INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute("CREATE INDEX sessions_run ON sessions(run)")


def _v3_transfer_verdicts(conn: sqlite3.Connection) -> None:
    # `evolve validate`: per individual and validation depth, the improvement over the baseline at
    # the search depth and at the validation depth (means, deltas, noise floors) and the verdict.
    # A re-validation replaces its row (INSERT OR REPLACE), so the newest row comes last, which
    # is how analysis reads the `individual`/`verdict` columns.
    conn.execute(
        """CREATE TABLE transfer_verdicts (
            run TEXT NOT NULL REFERENCES runs(name),
            individual TEXT NOT NULL REFERENCES individuals(id),
            search_depth INTEGER NOT NULL,
            validation_depth INTEGER NOT NULL,
            budget REAL,
            search_mean REAL,
            search_n INTEGER NOT NULL DEFAULT 0,
            search_delta REAL,
            search_floor REAL,
            validation_mean REAL,
            validation_n INTEGER NOT NULL DEFAULT 0,
            validation_delta REAL,
            validation_floor REAL,
            verdict TEXT NOT NULL CHECK (verdict IN ('transfers', 'does not transfer', 'inconclusive')),
            reason TEXT NOT NULL DEFAULT '',
            updated REAL NOT NULL,
            UNIQUE (individual, validation_depth)
        )"""
    )
    conn.execute("CREATE INDEX transfer_verdicts_run ON transfer_verdicts(run, validation_depth)")


def _v4_llm_call_individual(conn: sqlite3.Connection) -> None:
    # The child an LLM call was made for (NULL: a proposal that gave no child), so analysis can
    # show tokens and cost per individual. The engine fills it once the proposal's child exists.
    conn.execute("ALTER TABLE llm_calls ADD COLUMN individual TEXT")
    conn.execute("CREATE INDEX llm_calls_individual ON llm_calls(individual)")


def _v5_isolation_and_budget_unit(conn: sqlite3.Connection) -> None:
    # How train.py was isolated for each score ("bubblewrap 0.8.0", or "none": not safe, shown by
    # `evolve status`), and what the budget counts ("seconds" of training window, or "tokens").
    conn.execute("ALTER TABLE evaluations ADD COLUMN isolation TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE evaluations ADD COLUMN budget_unit TEXT NOT NULL DEFAULT 'seconds'")


def _v10_confirmations(conn: sqlite3.Connection) -> None:
    # A champion is confirmed on fresh seeds before it is called the best: seeds first_seed ..
    # first_seed + seeds - 1 of `individual` at `depth`, which it had never been scored on when the
    # row was written. mean/std/n are over those seeds only (the reported champion score); status
    # is pending until every one of them has a run, then confirmed (all ok) or failed.
    conn.execute(
        """CREATE TABLE confirmations (
            run TEXT NOT NULL REFERENCES runs(name),
            individual TEXT NOT NULL REFERENCES individuals(id),
            depth INTEGER NOT NULL,
            first_seed INTEGER NOT NULL,
            seeds INTEGER NOT NULL CHECK (seeds >= 1),
            status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'failed')),
            mean REAL,
            std REAL,
            n INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            started REAL NOT NULL,
            finished REAL,
            PRIMARY KEY (individual, depth)
        )"""
    )
    conn.execute("CREATE INDEX confirmations_run ON confirmations(run, depth, status)")


def _v15_provenance(conn: sqlite3.Connection) -> None:
    # `origin`: for a run's baseline, the individual of an earlier run whose exported code it
    # starts from (the lineage goes back across runs). `commit_sha` of an evaluation: the commit
    # the trainer actually ran, so a score is never read as another commit's.
    conn.execute("ALTER TABLE individuals ADD COLUMN origin TEXT")
    conn.execute("ALTER TABLE evaluations ADD COLUMN commit_sha TEXT")


def _v20_insight_versions(conn: sqlite3.Connection) -> None:
    # Meta-insights are versions of one notebook: each row replaces the one before (prompts show
    # the newest), with the structured bullets that passed the check (`items`, JSON), the ones that
    # were dropped and why (`dropped`), the finished children it was written from, and its call.
    for column in (
        "version INTEGER",
        "children INTEGER NOT NULL DEFAULT 0",
        "call INTEGER",
        "items TEXT NOT NULL DEFAULT '[]'",
        "dropped TEXT NOT NULL DEFAULT '[]'",
    ):
        conn.execute(f"ALTER TABLE meta_insights ADD COLUMN {column}")
    conn.execute(
        "UPDATE meta_insights SET version = (SELECT COUNT(*) FROM meta_insights m"
        " WHERE m.run IS meta_insights.run AND m.id <= meta_insights.id)"
    )
    conn.execute("CREATE INDEX meta_insights_run_version ON meta_insights(run, version)")


def _v21_llm_call_outcomes(conn: sqlite3.Connection) -> None:
    # What each LLM call was for (mutation, crossover, repair, insights) and what became of its
    # answer (usable, repaired, unusable) with why; `ok` keeps meaning "the endpoint answered".
    # Rows of older runs keep '' (not recorded then). The prompt and the answer of every answered
    # call, zlib-compressed, in a table of their own so that the accounting stays small.
    for column in ("purpose", "outcome", "why"):
        conn.execute(f"ALTER TABLE llm_calls ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    conn.execute(
        """CREATE TABLE llm_texts (
            call INTEGER PRIMARY KEY REFERENCES llm_calls(id),
            prompt BLOB NOT NULL,
            answer BLOB NOT NULL
        )"""
    )


def _v22_cpu_name(conn: sqlite3.Connection) -> None:
    # The CPU's model of each run: under a time budget a CPU run's score compares only with runs on
    # the same model (records.ScoreKey). Rows of older runs keep '' (unknown: admitted by any key).
    conn.execute("ALTER TABLE evaluations ADD COLUMN cpu_name TEXT NOT NULL DEFAULT ''")


def _v23_individual_revisions(conn: sqlite3.Connection) -> None:
    # A change counter per individual (evolve.snapshots reads only the rows changed since its last
    # read): every insert and update, by any process or module, sets `rev` to one more than the
    # table's highest. Recursive triggers are off, so the trigger's own update does not fire it.
    conn.execute("ALTER TABLE individuals ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE individuals SET rev = rowid")
    conn.execute("CREATE INDEX individuals_rev ON individuals(rev)")
    bump = "UPDATE individuals SET rev = (SELECT MAX(rev) FROM individuals) + 1 WHERE rowid = NEW.rowid"
    conn.execute(f"CREATE TRIGGER individuals_rev_insert AFTER INSERT ON individuals BEGIN {bump}; END")
    conn.execute(
        "CREATE TRIGGER individuals_rev_update AFTER UPDATE ON individuals"
        f" WHEN NEW.rev = OLD.rev BEGIN {bump}; END"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _v1_schema),
    Migration(2, "sessions: device time and duty cycle", _v2_sessions),
    Migration(3, "transfer verdicts of evolve validate", _v3_transfer_verdicts),
    Migration(4, "llm_calls: the individual a call was for", _v4_llm_call_individual),
    Migration(5, "evaluations: isolation and budget unit", _v5_isolation_and_budget_unit),
    Migration(10, "confirmations: a champion's fresh seeds", _v10_confirmations),
    Migration(15, "a baseline's origin; the commit of each evaluation", _v15_provenance),
    Migration(20, "meta_insights: versions with checked items", _v20_insight_versions),
    Migration(21, "llm_calls: purpose, outcome and the texts", _v21_llm_call_outcomes),
    Migration(22, "evaluations: the CPU's model", _v22_cpu_name),
    Migration(23, "individuals: a change counter", _v23_individual_revisions),
)


def applied_versions(conn: sqlite3.Connection) -> list[int]:
    """Versions recorded in the database, oldest first (empty for a new file)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT version FROM migrations ORDER BY version")]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the pending migrations; return the versions applied now. `conn` must be in autocommit."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and increasing, got {versions}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = set(applied_versions(conn))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    newer = done - set(versions)
    if newer and max(newer) > max(versions, default=0):
        raise EvolveError(
            f"this store has schema version {max(newer)}, newer than this autoevolve knows "
            f"({max(versions, default=0)}): upgrade autoevolve"
        )
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it while we waited for the write lock.
            if conn.execute("SELECT 1 FROM migrations WHERE version = ?", (migration.version,)).fetchone():
                conn.execute("COMMIT")
                continue
            migration.apply(conn)
            conn.execute(
                "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
