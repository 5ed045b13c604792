"""The store's file: the checks it passes before it is used, its online backups, its one-line errors.

Opening a store never rebuilds over what is there. A writer (`evolve run`) checks the file's
header (an SQLite file, not truncated), SQLite's `integrity_check` and the schema (an autoevolve
store, not another program's database) before anything is written; a reader (`evolve status`,
`top`, `show`) checks the header and the schema, and any damage its queries meet later is reported
the same way. A refused store is left exactly as it is, with a one-line message that names the
newest good backup and `evolve doctor --repair`.

Backups are whole, consistent copies taken online with SQLite's backup API while the run goes on
(`.evolve/backups/evolve-<UTC time>.db`); `evolve run` takes one at the start of a session, every
`[store] backup_minutes` and at the end, and keeps the last `[store] backups_kept`. A backup is
checked (`quick_check`) before it replaces anything, and only a backup that passes the checks
again is ever named as "good".

Every sqlite3 error the store meets becomes a `StoreError` with one line saying what is wrong and
what to do: no space left, a read-only workspace, a database locked by another process, a file
that cannot be opened, a damaged file.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

from .errors import EvolveError

SQLITE_MAGIC = b"SQLite format 3\x00"
BACKUP_DIR = "backups"
KEEP = 5  # backups kept by default
CORE_TABLES = frozenset({"migrations", "runs", "individuals", "evaluations"})


class StoreError(EvolveError):
    """The store cannot be used right now: full disk, read-only, locked, missing or damaged."""


class StoreDamaged(StoreError):
    """The file is damaged or is not an autoevolve store: refused, and left as it is."""


# --- reading -------------------------------------------------------------------------------------


def connect_readonly(path: Path, **kwargs) -> sqlite3.Connection:
    """A read-only connection that also works in a read-only folder.

    A WAL database normally needs its `-shm` file created beside it, even to read. Where the
    folder cannot be written (a read-only mount) and no `-wal` holds changes yet to be merged
    (a cleanly stopped run leaves none), the file is opened as immutable, which needs nothing."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, **kwargs)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return conn
    except sqlite3.OperationalError:
        wal = Path(f"{path}-wal")
        if os.access(path.parent, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
            raise
    return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, **kwargs)


# --- checks ---------------------------------------------------------------------------------------


def header_problem(path: Path) -> str | None:
    """What the first 100 bytes say is wrong with an SQLite file (None when they look sound)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if size == 0:
        return "it is empty"
    if not head.startswith(SQLITE_MAGIC[:15]) or len(head) < 100:
        return "not an SQLite database" if not head.startswith(SQLITE_MAGIC[:15]) else "truncated header"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # The page count is only trusted when the header says it is current (SQLite 3.7.0+ writes
    # both), and when no write-ahead log holds pages still to be copied in: a checkpoint cut
    # short (a full disk) leaves the file shorter than its header, and the log whole.
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    if not pending and head[92:96] == head[24:28] and pages and size < pages * page_size:
        return f"truncated: {size} bytes of the {pages * page_size} its header counts"
    return None


def schema_problem(conn: sqlite3.Connection) -> str | None:
    """None for an autoevolve store (or an empty file about to become one), else what it is instead."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "migrations" not in tables:
        shown = ", ".join(sorted(tables)[:4])
        return f"its tables are {shown}, and it has no migrations table"
    applied = {r[0] for r in conn.execute("SELECT version FROM migrations")}
    missing = sorted(CORE_TABLES - tables)
    if 1 in applied and missing:
        return f"its schema lacks the {', '.join(missing)} table(s)"
    return None


def content_problem(conn: sqlite3.Connection, full: bool = True) -> str | None:
    """SQLite's own check of every page (`integrity_check`; `quick_check` skips the indexes)."""
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = conn.execute(f"PRAGMA {pragma}(3)").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows and rows[0][0] == "ok":
        return None
    return "; ".join(str(r[0]) for r in rows)[:300]


def file_problem(path: Path, full: bool = True) -> tuple[str, bool] | None:
    """(what is wrong, whether it is foreign rather than damaged), or None for a sound store file."""
    problem = header_problem(path)
    if problem is not None:
        return problem, problem == "not an SQLite database"
    try:
        conn = connect_readonly(path, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc), "not a database" in str(exc)
    try:
        try:
            foreign = schema_problem(conn)
        except sqlite3.DatabaseError as exc:
            return str(exc), "not a database" in str(exc)
        if foreign is not None:
            return foreign, True
        problem = content_problem(conn, full)
        return (problem, False) if problem else None
    finally:
        conn.close()


# --- backups --------------------------------------------------------------------------------------


class Backups:
    """The online backups of one store, `<store's folder>/backups/evolve-<UTC time>.db`, oldest first."""

    _lock = threading.Lock()  # one backup at a time in this process

    def __init__(self, db: str | Path, keep: int = KEEP) -> None:
        self.db = Path(db)
        self.dir = self.db.parent / BACKUP_DIR
        self.keep = max(1, int(keep))

    def list(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("evolve-*.db") if p.is_file())

    def make(self, reason: str = "") -> Path:
        """A consistent copy of the store as last committed, checked; older ones beyond `keep` go.

        Raises StoreError (nothing half-written is left) when it cannot be made, e.g. a full disk."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            now = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            final = self.dir / f"evolve-{stamp}.db"
            tmp = self.dir / f".{final.name}.{os.getpid()}.tmp"
            try:
                src = sqlite3.connect(self.db, isolation_level=None)
                dst = sqlite3.connect(tmp, isolation_level=None)
                try:
                    src.execute("PRAGMA busy_timeout=30000")
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=DELETE")  # a plain file: readable without -wal/-shm
                    problem = content_problem(dst, full=False)
                finally:
                    dst.close()
                    src.close()
                if problem is not None:
                    raise StoreDamaged(
                        f"the backup of {self.db} failed its check ({problem}); the store may be damaged: run `evolve doctor`"
                    )
                os.replace(tmp, final)
            except sqlite3.Error as exc:
                tmp.unlink(missing_ok=True)
                raise describe(
                    exc, self.db, doing=f"backing it up ({reason})" if reason else "backing it up"
                ) from None
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(
                    f"cannot write a backup of {self.db} in {self.dir}: {exc.strerror}"
                ) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            for old in self.list()[: -self.keep]:
                old.unlink(missing_ok=True)
            return final

    def newest_good(self) -> Path | None:
        """The newest backup that passes the checks now (a damaged backup is skipped, not trusted)."""
        for path in reversed(self.list()):
            if file_problem(path, full=False) is None:
                return path
        return None


# --- one-line errors ------------------------------------------------------------------------------


def refusal(path: Path, problem: str, foreign: bool = False) -> StoreDamaged:
    """The one-line refusal of a damaged or foreign store, naming what restores it."""
    if foreign:
        return StoreDamaged(
            f"{path} is not an autoevolve store ({problem}); it was left as it is: move it away "
            f"(or point --workspace at a workspace) and run again"
        )
    good = Backups(path).newest_good()
    fix = (
        f"the newest good backup is {good}: `evolve doctor --repair` restores it"
        if good
        else "there is no backup: `evolve doctor --repair` rebuilds what git holds"
    )
    return StoreDamaged(f"{path} is damaged ({problem}); it was left as it is, {fix}")


def missing(path: Path, good: Path) -> StoreError:
    return StoreError(
        f"the store {path} is missing, but its backups are not: the newest good backup is {good}; "
        f"`evolve doctor --repair` restores it (a new store is never started over an evolution)"
    )


def describe(exc: sqlite3.Error, path: Path, doing: str = "") -> StoreError:
    """A sqlite3 error as one line that says what is wrong with the store and what to do."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    low = text.lower()
    where = f" while {doing}" if doing else ""
    if name.startswith("SQLITE_FULL") or "disk is full" in low:
        return StoreError(
            f"no space left on the disk of {path}{where}; nothing was half-written: free some space, "
            f"then run the command again (`evolve run` resumes)"
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in low or "read-only" in low:
        return StoreError(
            f"{path} is read-only{where} ({text}); `evolve status`, `top` and `show` still read it; "
            f"make the workspace writable to run"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in low:
        return StoreError(
            f"{path} is locked by another process{where} ({text}); wait for it or stop it, then run again"
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in low:
        return StoreError(f"cannot open {path}{where} ({text}): check that its folder exists and is readable")
    if (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or isinstance(exc, sqlite3.DatabaseError)
        and ("malformed" in low or "not a database" in low)
    ):
        return refusal(path, text, foreign="not a database" in low)
    if name.startswith("SQLITE_IOERR") or "disk i/o" in low:
        return StoreError(f"the disk failed under {path}{where} ({text}); check the device, then run again")
    return StoreError(f"the store {path} failed{where}: {text}")


def os_problem(exc: OSError, where: Path) -> StoreError | None:
    """A full disk or a read-only folder met outside the store (a log, a worktree) as one line;
    None for any other OSError (a bug stays a bug)."""
    what = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"no space left on the disk of {where}{what}; nothing was half-written: free some space, "
            f"then run the command again (`evolve run` resumes)"
        )
    if exc.errno == errno.EROFS:
        return StoreError(f"{where} is read-only{what}; make the workspace writable to run")
    return None
