"""`evolve doctor`: check the store, the branches and the worktrees against each other, and repair.

`diagnose(ws)` reads only (it works in a read-only workspace) and returns `Finding`s: the store's
file (damaged, foreign, missing, a newer schema), its backups, every individual's branch against
the commit the store scored (deleted, moved, or in git but not in the store), commits gone from
git, the worktree pool, and a run in progress.

`repair(ws)` takes the workspace's run lock (never beside a running `evolve run`) and:

1. moves a damaged or foreign store aside to `.evolve/damaged/` (never deletes it) and restores
   the newest good backup; without one, starts an empty store;
2. puts every branch back at the commit the store scored (a hand-moved tip is kept under
   `refs/evolve/displaced/<run>/<id>`); an individual whose commit is gone is marked lost;
3. re-adopts what git holds and the store does not (evaluations after the backup, or a store
   rebuilt from nothing): runs, then individuals in id order, lineage from their trailers, each
   through the engine's intake rule (novelty, then the static guard) and queued, so the next
   `evolve run` trains what lost its scores;
4. prunes the worktree pool.

It reports what it did and what could not be recovered (evaluations newer than the backup,
commits gone from git, individuals whose parents neither git nor the store holds).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from genome.errors import GenomeError
from genome.lineage import runs as git_runs
from genome.merge import MERGE_OPERATOR
from genome.record import Genome, sort_key
from genome.repo import GenomeRepo, git_process, run_git
from genome.workspace import Workspace
from genome.worktrees import POOL_DIR

from .agreement import LOST_EVENT, Mismatch, compare
from .migrations import MIGRATIONS, applied_versions
from .novelty import admit
from .store import LineageKind, Status, Store
from .storefile import Backups, connect_readonly, file_problem

DB_FILE = "evolve.db"
DAMAGED_DIR = "damaged"
DISPLACED = "refs/evolve/displaced"


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warning" or "error"
    topic: str  # store, backups, branches, commits, worktrees, run
    text: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok", "warning": "warning", "error": "ERROR"}[self.level]
        return f"[{mark}] {self.topic}: {self.text}" + (f" ({self.fix})" if self.fix else "")


@dataclass
class RepairReport:
    done: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # what could not be recovered


# --- diagnosis ------------------------------------------------------------------------------------


def _store_findings(db: Path, backups: Backups) -> tuple[list[Finding], bool]:
    """Findings on the store's file, and whether it can be read."""
    good = backups.newest_good()
    if not db.exists():
        if good is not None:
            return [
                Finding("error", "store", f"{db} is missing; backups exist", "--repair restores the newest")
            ], False
        return [Finding("ok", "store", f"no store yet at {db}")], False
    found = file_problem(db, full=True)
    if found is not None:
        problem, foreign = found
        what = "is not an autoevolve store" if foreign else "is damaged"
        fix = (
            f"--repair moves it aside and restores {good.name}"
            if good
            else "--repair moves it aside and rebuilds from git"
        )
        return [Finding("error", "store", f"{db} {what} ({problem})", fix)], False
    conn = connect_readonly(db)
    try:
        version = max(applied_versions(conn), default=0)
    finally:
        conn.close()
    known = max(m.version for m in MIGRATIONS)
    if version > known:
        return [
            Finding(
                "error",
                "store",
                f"schema version {version} is newer than this autoevolve ({known})",
                "upgrade autoevolve",
            )
        ], False
    size = sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists())
    return [
        Finding("ok", "store", f"{db.name} passes integrity_check ({size / 1e6:.1f} MB, schema {version})")
    ], True


def _backup_findings(backups: Backups) -> list[Finding]:
    made = backups.list()
    good = backups.newest_good()
    if not made:
        return [Finding("warning", "backups", f"none in {backups.dir}", "the next `evolve run` takes one")]
    if good is None:
        return [Finding("warning", "backups", f"none of the {len(made)} in {backups.dir} passes its check")]
    age = (time.time() - good.stat().st_mtime) / 3600
    skipped = len(made) - 1 - made.index(good)
    note = f"; {skipped} newer one(s) fail their check" if skipped else ""
    return [Finding("ok", "backups", f"{len(made)} kept, newest good {good.name} ({age:.1f} h old){note}")]


def _missing_commits(root: Path, shas: list[str]) -> set[str]:
    if not shas:
        return set()
    proc = git_process(root, "cat-file", "--batch-check", input=("\n".join(shas) + "\n").encode())
    return {line.split()[0] for line in proc.stdout.decode().splitlines() if line.endswith(" missing")}


def _worktree_findings(root: Path) -> list[Finding]:
    pool = root / POOL_DIR
    out = run_git(root, "worktree", "list", "--porcelain")
    registered, prunable = set(), []
    path = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = Path(line[len("worktree ") :])
            registered.add(path.resolve())
        elif line.startswith("prunable") and path is not None:
            prunable.append(path)
    strays = (
        [p for p in pool.iterdir() if p.is_dir() and p.resolve() not in registered] if pool.is_dir() else []
    )
    findings = []
    if prunable:
        findings.append(
            Finding(
                "warning",
                "worktrees",
                f"{len(prunable)} registered but gone: {', '.join(map(str, prunable[:3]))}",
                "--repair prunes them",
            )
        )
    if strays:
        findings.append(
            Finding(
                "warning",
                "worktrees",
                f"{len(strays)} folder(s) in {pool} git does not know",
                "--repair removes them",
            )
        )
    if not findings:
        slots = len([p for p in registered if pool.resolve() in p.parents])
        findings.append(Finding("ok", "worktrees", f"{slots} pool worktree(s), all registered"))
    return findings


def _active_run(state_dir: Path) -> int | None:
    """The pid of an `evolve run` holding the workspace's lock, or None."""
    path = state_dir / "run.lock"
    if not path.exists():
        return None
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def diagnose(ws: Workspace) -> list[Finding]:
    """Everything `evolve doctor` reports; reads only."""
    db = ws.state_dir / DB_FILE
    backups = Backups(db)
    findings, readable = _store_findings(db, backups)
    findings += _backup_findings(backups)
    if readable:
        with Store(db, readonly=True) as store:
            problems = compare(store, ws.root)
            gone = _missing_commits(ws.root, [i.commit for i in store.individuals()])
            gone_ids = [i.id for i in store.individuals() if i.commit in gone]
            running = store.individuals(ws.run, status=Status.RUNNING)
        for p in problems:
            if p.kind == "unrecorded" and p.run == ws.run:
                findings.append(Finding("warning", "branches", p.text(), "`evolve run` adopts it"))
            elif p.kind == "unrecorded":
                findings.append(Finding("warning", "branches", p.text(), "--repair adopts it"))
            else:
                findings.append(Finding("error", "branches", p.text(), "--repair puts it back"))
        if gone_ids:
            findings.append(
                Finding(
                    "error",
                    "commits",
                    f"gone from git: {', '.join(gone_ids[:5])}",
                    "--repair marks them lost",
                )
            )
        if not problems and not gone_ids:
            findings.append(
                Finding("ok", "branches", "every individual's branch is the commit the store scored")
            )
        pid = _active_run(ws.state_dir)
        if running and pid is None:
            findings.append(
                Finding(
                    "warning",
                    "run",
                    f"{len(running)} individual(s) left running by a stopped session",
                    "`evolve run` runs them again",
                )
            )
    else:
        tips = [g for name in git_runs(ws.root) for g in _genomes(ws.root, name)]
        findings.append(
            Finding(
                "warning",
                "branches",
                f"git holds {len(tips)} individual(s) of {len(git_runs(ws.root))} run(s)",
                "--repair re-adopts what the store lacks",
            )
        )
    findings += _worktree_findings(ws.root)
    pid = _active_run(ws.state_dir)
    if pid is not None:
        findings.append(
            Finding(
                "warning",
                "run",
                f"an `evolve run` is in progress (pid {pid})",
                "--repair waits for it to stop",
            )
        )
    return findings


def _genomes(root: Path, run: str) -> list[Genome]:
    try:
        return GenomeRepo(root, run).genomes()
    except GenomeError:  # a tip without trailers: the branch findings say so
        return []


# --- repair ---------------------------------------------------------------------------------------


def _restore(db: Path, report: RepairReport) -> None:
    """Move a damaged, foreign or missing store out of the way and put the newest good backup in."""
    backups = Backups(db)
    found = file_problem(db, full=True) if db.exists() else ("missing", False)
    if found is None:
        return
    if db.exists():
        aside = db.parent / DAMAGED_DIR
        aside.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{db}{suffix}")
            if src.exists():
                os.replace(src, aside / f"evolve-{stamp}.db{suffix}")
        report.done.append(
            f"moved the {'foreign' if found[1] else 'damaged'} store aside to {aside}/evolve-{stamp}.db ({found[0]})"
        )
    good = backups.newest_good()
    if good is None:
        report.done.append("no good backup: started an empty store, filled from git below")
        report.lost.append("every evaluation and decision (no backup to restore them from)")
        return
    tmp = db.with_name(f".{db.name}.restore")
    shutil.copyfile(good, tmp)
    os.replace(tmp, db)
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(good.stat().st_mtime))
    report.done.append(f"restored {good.name} (taken {taken})")
    report.lost.append(
        f"evaluations and decisions recorded after {taken} (git's individuals are re-adopted below)"
    )


def _put_back(store: Store, root: Path, problems: list[Mismatch], report: RepairReport) -> None:
    gone = _missing_commits(root, [p.recorded for p in problems if p.recorded])
    for p in problems:
        if p.kind == "unrecorded":
            continue
        if p.recorded in gone:
            ind = store.get(p.id)
            with store.transaction():
                if ind is not None and ind.decision == "accept":
                    store.set_decision(p.id, "reject")  # never a parent or a champion again
                store.add_event(
                    LOST_EVENT,
                    {"id": p.id, "commit": p.recorded, "decision": ind.decision if ind else None},
                    run=p.run,
                )
            report.lost.append(f"{p.id}: its commit {p.recorded[:10]} is gone from git; marked lost")
            continue
        if p.kind == "moved":
            keep = f"{DISPLACED}/{p.run}/{p.id}"
            run_git(root, "update-ref", keep, p.actual)
            run_git(root, "update-ref", f"refs/heads/{p.branch}", p.recorded, p.actual)
            report.done.append(
                f"{p.branch} put back at {p.recorded[:10]} (the hand-made {p.actual[:10]} is kept as {keep})"
            )
        else:
            run_git(root, "update-ref", f"refs/heads/{p.branch}", p.recorded, "0" * 40)
            report.done.append(f"{p.branch} restored at {p.recorded[:10]}")


def _adopt(store: Store, ws: Workspace, report: RepairReport) -> None:
    """Runs and individuals git holds and the store does not, parents first, through the intake rule."""
    known_runs = {r.name for r in store.runs()}
    everything = sorted(
        (g for name in git_runs(ws.root) for g in _genomes(ws.root, name)), key=lambda g: sort_key(g.id)
    )
    adopted: dict[str, int] = {}
    for genome in everything:
        if store.get(genome.id) is not None:
            continue
        if genome.run not in known_runs:
            s = ws.settings
            # No identity (depth, budget, data): the next `evolve run` of it records its own.
            store.add_run(genome.run, strategy=s.strategy, profile=s.profile, exist_ok=True,
                          settings={"rebuilt_by": "evolve doctor --repair"})  # fmt: skip
            known_runs.add(genome.run)
            report.done.append(
                f"run {genome.run!r} recreated from git (its next `evolve run` records its settings)"
            )
        missing = [p for p in genome.parents if store.get(p) is None]
        if missing:
            report.lost.append(
                f"{genome.id}: its parent(s) {', '.join(missing)} are in neither git nor the store"
            )
            continue
        repo = GenomeRepo(ws.root, genome.run, ws.settings.mutable)
        admission = admit(store, repo, genome.run, genome, ws.settings.mutable)
        first = store.get(genome.parents[0]) if genome.parents else None
        kind = LineageKind.MERGE if len(genome.parents) > 1 and genome.operator == MERGE_OPERATOR else None
        with store.transaction():
            store.add_individual(
                id=genome.id, run=genome.run, commit=genome.commit, branch=genome.branch, parents=genome.parents,
                operator=genome.operator, description=genome.description, island=first.island if first else 0,
                status=admission.status, code_hash=admission.code_hash, kind=kind, guard_reason=admission.reason,
                origin=genome.origin or None,
            )  # fmt: skip
            store.add_event(
                "readopted",
                {"id": genome.id, "status": admission.status.value, "by": "evolve doctor"},
                run=genome.run,
            )
        adopted[genome.run] = adopted.get(genome.run, 0) + 1
    for name, n in sorted(adopted.items()):
        report.done.append(
            f"re-adopted {n} individual(s) of run {name!r} from git (queued again unless refused)"
        )


def repair(ws: Workspace) -> RepairReport:
    """Make the store, the branches and the worktrees agree again (see the module docstring)."""
    from .scheduler import workspace_lock

    report = RepairReport()
    db = ws.state_dir / DB_FILE
    with workspace_lock(ws.state_dir):
        _restore(db, report)
        with Store(db) as store:
            _put_back(store, ws.root, compare(store, ws.root), report)
            _adopt(store, ws, report)
            left = [m for m in compare(store, ws.root) if m.kind != "unrecorded"]
        for m in left:
            report.lost.append(f"still disagrees: {m.text()}")
        run_git(ws.root, "worktree", "prune")
        pool = ws.root / POOL_DIR
        registered = {
            Path(line[9:]).resolve()
            for line in run_git(ws.root, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")
        }
        for stray in (
            [p for p in pool.iterdir() if p.is_dir() and p.resolve() not in registered]
            if pool.is_dir()
            else []
        ):
            shutil.rmtree(stray, ignore_errors=True)
            report.done.append(f"removed the stray worktree folder {stray}")
        report.done.append("pruned git's worktree records")
    return report
