"""Crash safety: SIGKILL the `evolve run` controller at random moments, resume, check the state.

One workspace, one run, many trials. A trial raises the run's `--max-experiments` by `--step`,
starts `evolve run` as a subprocess, SIGKILLs it after a random delay (uniform over the first 80%
of an estimate of the run's length, so kills land at start-up, in the baseline, in proposals, in
training and in recording alike), snapshots what the kill left behind, then resumes with
`evolve run` to completion and checks. Targeted trials (`--targeted`) wait out a shorter random
delay, then watch git's refs and kill the moment the next child's branch appears: between its commit and
its store row, a window of milliseconds that random kills rarely hit. After each resume it checks:

- SQLite `PRAGMA integrity_check` and `foreign_key_check` of the store (and of optuna.db);
- every evaluation recorded exactly once: no (individual, depth, seed, purpose) twice, no seed run
  twice for one individual, and nothing recorded before the kill lost or changed;
- every `evo/<run>/` branch has a store row and every row a branch;
- no individual left running, queued or proposed; every trained child decided, once;
- no Optuna trial left running; the last session ended `done`; every evaluation ok;
- no worktree of the pool left behind or dirty, no stale `git worktree` entry, the user's checkout
  untouched, and no training process of the killed controller still alive.

The training is real: the tiny profile on CPU with a small, fixed-step train.py (a bigram; its
score depends on code and seed only, so the machine's load does not leak into the results) that
leaves a scratch file in its worktree and fails if it finds one: a worktree the pool did not
clean after a kill would show up as a failed evaluation.

    python bench/chaos.py --trials 20 --targeted 10 --seed 0 --out chaos.json
    python bench/chaos.py --trials 3 --workdir /tmp/chaos        # keep the workspace to look at

tests/chaos/ runs the same trials in CI (three random kills and one targeted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout too, not only when installed

from evolve.scheduler import pool_runs  # noqa: E402
from genome.repo import git_process  # noqa: E402
from genome.workspace import Workspace  # noqa: E402
from genome.worktrees import POOL_DIR  # noqa: E402
from tests.run_support import (  # noqa: E402 - the tests' shared set-up: the bigram, the settings, the env
    BIGRAM,
    controller_env,
    evolve_command,
    search_settings,
    settings_workspace,
)
from trainer.process import proc_stat  # noqa: E402

RUN = "chaos"
DB_FILE = "evolve.db"
OPTUNA_FILE = "optuna.db"
SEARCH = search_settings(baseline_seeds=2, max_seeds=2, max_changes=2)
RESUME_TIMEOUT = 900.0  # seconds one resume may take before the trial counts as hung
# The bigram, plus a scratch file in its worktree: a killed run leaves it behind (a dirty worktree),
# and a run that finds one fails, so a worktree the pool did not clean shows up as a crash.
SCRATCH = """cfg = prepare.run_config()
scratch = Path("scratch.tmp")  # a checkpoint, say: a run that is killed leaves it behind
if scratch.exists():
    raise RuntimeError("scratch.tmp of an earlier run is still in this worktree")
scratch.write_text("half-written")
"""


# --- the workspace and the controller ------------------------------------------------------------


def chaos_train_py(folder: Path) -> Path:
    """The bigram train.py with the scratch file (see SCRATCH), written into `folder`."""
    text = BIGRAM.read_text()
    text = text.replace("cfg = prepare.run_config()\n", SCRATCH, 1).replace(
        "import prepare\n", "from pathlib import Path\n\nimport prepare\n", 1
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(text)
    return folder / "train.py"


def make_workspace(root: Path, train_py: Path | None = None, budget: float = 81920) -> Workspace:
    """A fresh workspace for the tiny profile whose evolve.toml (committed) holds the search settings."""
    train_py = train_py or chaos_train_py(root.with_name(root.name + "-src"))
    return settings_workspace(root, SEARCH, commit=True, train_py=train_py, run=RUN, profile="tiny", islands=2,
                              budget=budget)  # fmt: skip


def controller_cmd(ws: Workspace, slots: int, max_experiments: int) -> list[str]:
    return evolve_command("run", "-w", str(ws.root), "--gpus", f"cpu:{slots}",
                          "--max-experiments", str(max_experiments), "--interval", "10")  # fmt: skip


# --- what the kill left behind --------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # Read-write on purpose: a read-only open of a WAL file whose writer was killed cannot recover it.
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def evaluation_keys(ws: Workspace) -> set[tuple]:
    """Every recorded evaluation as (individual, depth, seed, purpose, status, val_bpb)."""
    db = ws.state_dir / DB_FILE
    if not db.exists():
        return set()
    with _connect(db) as conn:
        rows = conn.execute("SELECT individual, depth, seed, purpose, status, val_bpb FROM evaluations")
        return {tuple(r) for r in rows}


def branch_ids(ws: Workspace) -> set[str]:
    out = git_process(ws.root, "for-each-ref", "--format=%(refname:short)", f"refs/heads/evo/{RUN}/").stdout
    return {b.rsplit("/", 1)[1] for b in out.decode().split()}


def row_ids(ws: Workspace, status: Iterable[str] | None = None) -> set[str]:
    db = ws.state_dir / DB_FILE
    if not db.exists():
        return set()
    with _connect(db) as conn:
        if status is None:
            rows = conn.execute("SELECT id FROM individuals WHERE run = ?", (RUN,))
        else:
            wanted = list(status)
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT id FROM individuals WHERE run = ? AND status IN ({marks})", (RUN, *wanted)
            )
        return {r[0] for r in rows}


def pool_slots(ws: Workspace) -> list[Path]:
    """The search pool's worktrees (`.evolve/worktrees/<n>`), whatever state they are in."""
    base = ws.root / POOL_DIR
    return sorted(p for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


def dirty(path: Path) -> str:
    """`git status --porcelain --ignored` of a worktree ('' when clean, a note when it is broken)."""
    proc = git_process(path, "status", "--porcelain", "--ignored", "--untracked-files=all")
    if proc.returncode != 0:
        return f"broken: {proc.stderr.decode(errors='replace').strip()[-200:]}"
    return proc.stdout.decode(errors="replace").strip()


def leftover_runs(ws: Workspace) -> list[int]:
    """Training processes (tagged by the trainer) still working in this workspace's pool."""
    return pool_runs(ws.root / POOL_DIR, ws.state_dir / "logs")


def optuna_running(ws: Workspace, uncommitted: bool = False) -> int:
    """Optuna trials asked and not told (`uncommitted`: only those whose child was never committed)."""
    path = ws.state_dir / OPTUNA_FILE
    if not path.exists():
        return 0
    sql = "SELECT COUNT(*) FROM trials t WHERE state = 'RUNNING'"
    if uncommitted:
        sql += (" AND NOT EXISTS (SELECT 1 FROM trial_user_attributes a"
                " WHERE a.trial_id = t.trial_id AND a.key = 'child')")  # fmt: skip
    with _connect(path) as conn:
        try:
            return conn.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:  # killed before optuna made its tables
            return 0


@dataclass(frozen=True)
class Snapshot:
    """The state right after a SIGKILL (before anything repairs it)."""

    running: tuple[str, ...]  # rows marked running: their runs were lost and must run again
    branches_without_row: tuple[str, ...]  # children committed whose row never landed
    dirty_worktrees: tuple[str, ...]  # slot: first line of its status
    leftover_runs: int  # training processes of the killed controller still alive
    optuna_running: int  # trials asked and not told (children waiting for their verdict included)
    proposing: int  # trials asked whose child was not committed yet: a proposal cut in the middle

    @property
    def phase(self) -> str:
        """A rough label of where the kill landed."""
        if self.branches_without_row:
            return "between commit and row"
        if self.running:
            return "training"
        if self.proposing:
            return "proposing"
        return "idle or start-up"


def snapshot(ws: Workspace) -> Snapshot:
    rows = row_ids(ws)
    running = tuple(sorted(row_ids(ws, ["running"])))
    orphans = tuple(sorted(branch_ids(ws) - rows)) if (ws.state_dir / DB_FILE).exists() else ()
    dirty_slots = []
    for path in pool_slots(ws):
        status = dirty(path)
        if status:
            dirty_slots.append(f"{path.name}: {status.splitlines()[0]}")
    return Snapshot(running, orphans, tuple(dirty_slots), len(leftover_runs(ws)), optuna_running(ws),
                    optuna_running(ws, uncommitted=True))  # fmt: skip


# --- the checks -------------------------------------------------------------------------------------


def check(ws: Workspace, *, before: set[tuple] = frozenset(), min_experiments: int = 0,
          user_status: str = "") -> list[str]:  # fmt: skip
    """Every invariant a finished (resumed) run must hold; returns the problems found ([] = sound)."""
    problems: list[str] = []
    db = ws.state_dir / DB_FILE
    if not db.exists():
        return ["no store"]
    for path in (db, ws.state_dir / OPTUNA_FILE):
        if not path.exists():
            continue
        with _connect(path) as conn:
            verdict = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                problems.append(f"{path.name}: integrity_check says {verdict[:3]}")
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                problems.append(f"{path.name}: {len(broken)} foreign key violation(s)")
    with _connect(db) as conn:
        twice = conn.execute(
            "SELECT individual, depth, seed, purpose, COUNT(*) FROM evaluations"
            " GROUP BY individual, depth, seed, purpose HAVING COUNT(*) > 1"
        ).fetchall()
        problems += [f"evaluation {tuple(r)[:4]} recorded {r[4]} times" for r in twice]
        reseeded = conn.execute(
            "SELECT individual, depth, seed, COUNT(*) FROM evaluations"
            " GROUP BY individual, depth, seed HAVING COUNT(*) > 1"
        ).fetchall()
        problems += [f"{r[0]} ran seed {r[2]} at depth {r[1]} {r[3]} times" for r in reseeded]
        stuck = conn.execute(
            "SELECT id, status FROM individuals WHERE run = ? AND status IN ('running', 'queued', 'proposed')",
            (RUN,),
        ).fetchall()
        problems += [f"{r[0]} left {r[1]} after the run ended" for r in stuck]
        undecided = conn.execute(
            "SELECT id FROM individuals WHERE run = ? AND parents != '[]' AND status != 'rejected'"
            " AND decision IS NULL",
            (RUN,),
        ).fetchall()
        problems += [f"{r[0]} trained but never decided" for r in undecided]
        decided_twice = conn.execute(
            "SELECT json_extract(payload, '$.id'), COUNT(*) FROM events WHERE run = ? AND kind = 'decision'"
            " GROUP BY 1 HAVING COUNT(*) > 1",
            (RUN,),
        ).fetchall()
        problems += [f"{r[0]} decided {r[1]} times" for r in decided_twice]
        failed = conn.execute("SELECT individual, seed, status, reason FROM evaluations WHERE status != 'ok'")
        problems += [f"{r[0]} seed {r[1]} ended {r[2]}: {r[3][:120]}" for r in failed]  # none should fail
        trained = conn.execute(
            "SELECT COUNT(*) FROM individuals WHERE run = ? AND parents != '[]' AND status != 'rejected'",
            (RUN,),
        ).fetchone()[0]
        if trained < min_experiments:
            problems.append(f"{trained} children trained, {min_experiments} asked for")
        last = conn.execute(
            "SELECT ended, stop_reason FROM sessions WHERE run = ? ORDER BY id DESC LIMIT 1", (RUN,)
        ).fetchone()
        if last is None or last["ended"] is None or last["stop_reason"] != "done":
            problems.append(f"the last session did not end done: {dict(last) if last else None}")
    lost = before - evaluation_keys(ws)
    problems += [f"evaluation {key[:4]} recorded before the kill is gone or changed" for key in sorted(lost)]
    rows, branches = row_ids(ws), branch_ids(ws)
    problems += [f"branch evo/{RUN}/{i} has no store row" for i in sorted(branches - rows)]
    problems += [f"store row {i} has no branch" for i in sorted(rows - branches)]
    if optuna_running(ws):
        problems.append(f"{optuna_running(ws)} Optuna trial(s) left running")
    for path in pool_slots(ws):
        status = dirty(path)
        problems.append(f"worktree {path.name} left behind" + (f", dirty: {status[:200]}" if status else ""))
    listed = git_process(ws.root, "worktree", "list", "--porcelain").stdout.decode()
    if "prunable" in listed:
        problems.append("git worktree list shows prunable (stale) worktrees")
    now = git_process(ws.root, "status", "--porcelain").stdout.decode().strip()
    if now != user_status:
        problems.append(f"the user's checkout changed: {now[:200]!r}")
    pids = leftover_runs(ws)
    if pids:
        problems.append(f"training process(es) {pids} still running in the pool")
    return problems


# --- trials -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    number: int
    max_experiments: int
    delay: float  # seconds after start when SIGKILL was sent
    killed: bool  # False: the run had already finished by then
    snapshot: Snapshot | None
    resume_seconds: float
    resume_rc: int
    requeued: tuple[str, ...]  # what the resume put back in the queue
    leftovers_at_resume: int  # training processes of the killed run alive once the resume began training
    problems: tuple[str, ...]
    targeted: bool = False  # killed on a new child branch rather than at a random moment

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Chaos:
    """A run of trials in one workspace; `run()` does them one after another."""

    workdir: Path
    data: Path
    seed: int = 0
    slots: int = 2
    step: int = 2  # experiments added per trial
    first_estimate: float = 25.0  # seconds of a run before one was timed
    log: Callable[[str], None] = print
    trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.home = self.workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.ws = make_workspace(self.workdir / "ws")
        self.env = controller_env(self.home, self.data)
        self.user_status = git_process(self.ws.root, "status", "--porcelain").stdout.decode().strip()
        self.estimate = self.first_estimate
        self.experiments = 0

    def _requeued(self, after_id: int) -> tuple[str, ...]:
        with _connect(self.ws.state_dir / DB_FILE) as conn:
            rows = conn.execute(
                "SELECT payload FROM events WHERE run = ? AND kind = 'resume' AND id > ?", (RUN, after_id)
            ).fetchall()
        return tuple(sorted({i for r in rows for i in json.loads(r[0]).get("requeued", [])}))

    def _last_event(self) -> int:
        db = self.ws.state_dir / DB_FILE
        if not db.exists():
            return 0
        with _connect(db) as conn:
            return conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def _training_started(self, after_id: int) -> bool:
        with _connect(self.ws.state_dir / DB_FILE) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM events WHERE id > ? AND kind IN ('evaluated', 'session_start')", (after_id,)
            ).fetchone())  # fmt: skip

    def _wait_for_branch(self, proc: subprocess.Popen) -> bool:
        """Poll git's loose refs until a new child branch appears; False if the run ended first."""
        refs = self.ws.root / ".git" / "refs" / "heads" / "evo" / RUN
        names = lambda: {n for n in os.listdir(refs) if not n.endswith(".lock")} if refs.is_dir() else set()
        known = names()
        while proc.poll() is None:
            if names() - known:  # the ref is in place (git writes NAME.lock, then renames it)
                return True
            time.sleep(0.002)
        return False

    def trial(self, targeted: bool = False) -> Trial:
        """One kill and resume. `targeted`: after the random delay, wait for the next child branch to
        appear and kill then, inside the few milliseconds between its commit and its store row."""
        number = len(self.trials) + 1
        self.experiments += self.step
        cmd = controller_cmd(self.ws, self.slots, self.experiments)
        # Most kills land before the run ends; children are proposed early on (ahead of the devices).
        delay = self.rng.uniform(0.0, (0.25 if targeted else 0.8) * self.estimate)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"trial{number:02d}-killed.log", "w") as out:
            began, length = time.monotonic(), delay
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                killed = not targeted or self._wait_for_branch(proc)
            if killed:
                proc.send_signal(signal.SIGKILL)
                delay = time.monotonic() - began
            proc.wait()
            if not killed:
                length = time.monotonic() - began
        snap = snapshot(self.ws) if killed else None
        before = evaluation_keys(self.ws)
        mark = self._last_event()
        # The resume: watch whether the killed run's training processes survive into it.
        start = time.monotonic()
        leftovers = 0
        with open(logs / f"trial{number:02d}-resume.log", "w") as out:
            resume = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            seen_start = False
            while resume.poll() is None:
                if time.monotonic() - start > RESUME_TIMEOUT:
                    resume.kill()
                    break
                if not seen_start and (self.ws.state_dir / DB_FILE).exists() and self._training_started(mark):
                    seen_start = True
                    time.sleep(0.5)  # the session is open: leftovers should be gone by its first run
                    leftovers = len([p for p in leftover_runs(self.ws) if _parent(p) != resume.pid])
                time.sleep(0.1)
            rc = resume.wait()
        took = time.monotonic() - start
        problems = check(
            self.ws, before=before, min_experiments=self.experiments, user_status=self.user_status
        )
        if rc != 0:
            problems.insert(0, f"the resume exited {rc} (see {logs / f'trial{number:02d}-resume.log'})")
        if leftovers:
            problems.append(
                f"{leftovers} training process(es) of the killed controller ran on into the resume"
            )
        requeued = self._requeued(mark)
        if snap is not None and not set(snap.running) <= set(requeued):
            problems.append(f"running at the kill {snap.running}, requeued only {requeued}")
        # The next delay is drawn over the length of a whole run (killed: about delay + resume).
        self.estimate = length if not killed else 0.5 * self.estimate + 0.5 * (delay + took)
        result = Trial(number, self.experiments, round(delay, 2), killed, snap, round(took, 1), rc, requeued,
                       leftovers, tuple(problems), targeted)  # fmt: skip
        self.trials.append(result)
        what = f"killed at {delay:.1f}s ({snap.phase})" if snap else f"finished before {delay:.1f}s"
        self.log(f"[chaos] trial {number}: {what}; resume {took:.0f}s, "
                 + ("ok" if result.ok else f"{len(problems)} problem(s): {problems[:3]}"))  # fmt: skip
        return result

    def run(self, kills: int, targeted: int = 0) -> list[Trial]:
        """Trials until `kills` random and `targeted` targeted ones killed a run mid-way (a run that
        finished first still counts as a trial and is checked; at most 3 x as many trials)."""
        for want, kind in ((kills, False), (targeted, True)):
            done = tries = 0
            while done < want and tries < 3 * want:
                done += self.trial(targeted=kind).killed
                tries += 1
        return self.trials


def _parent(pid: int) -> int:
    stat = proc_stat(pid)
    return stat[1] if stat is not None else -1


def summary(trials: list[Trial]) -> dict:
    killed = [t for t in trials if t.killed]
    phases: dict[str, int] = {}
    for t in killed:
        assert t.snapshot is not None
        phases[t.snapshot.phase] = phases.get(t.snapshot.phase, 0) + 1
    return {
        "trials": len(trials),
        "killed_mid_run": len(killed),
        "targeted_kills": sum(1 for t in killed if t.targeted),
        "phases": phases,
        "with_runs_in_flight": sum(1 for t in killed if t.snapshot and t.snapshot.running),
        "with_orphan_branches": sum(1 for t in killed if t.snapshot and t.snapshot.branches_without_row),
        "with_proposal_cut": sum(1 for t in killed if t.snapshot and t.snapshot.proposing),
        "with_dirty_worktrees": sum(1 for t in killed if t.snapshot and t.snapshot.dirty_worktrees),
        "with_leftover_runs_at_kill": sum(1 for t in killed if t.snapshot and t.snapshot.leftover_runs),
        "leftover_runs_into_resume": sum(t.leftovers_at_resume for t in trials),
        "requeued": sum(len(t.requeued) for t in trials),
        "trials_with_problems": sum(1 for t in trials if not t.ok),
        "problems": [p for t in trials for p in t.problems],
        "median_resume_s": sorted(t.resume_seconds for t in trials)[len(trials) // 2] if trials else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kills at random moments to make")
    ap.add_argument("--targeted", type=int, default=0, help="kills between a child's commit and its row")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--slots", type=int, default=2, help="CPU devices of the run (cpu:N)")
    ap.add_argument("--step", type=int, default=2, help="experiments added per trial")
    ap.add_argument(
        "--data", type=Path, help="a prepared tiny dataset (default: the builtin one, prepared here)"
    )
    ap.add_argument("--workdir", type=Path, help="where the workspace goes (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="write the trials and the summary as JSON here")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evolve-chaos-"))
    data = args.data
    if data is None:
        from prepare.pipeline import prepare_dataset
        from prepare.profiles import get_profile

        os.environ["EVOLVE_HOME"] = str(workdir / "home")
        data = prepare_dataset(get_profile("tiny"), source="builtin").path
    chaos = Chaos(workdir, data, seed=args.seed, slots=args.slots, step=args.step)
    started = time.time()
    chaos.run(args.trials, args.targeted)
    result = summary(chaos.trials)
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "seed": args.seed, "slots": args.slots, "step": args.step,
            "workspace": str(chaos.ws.root), "summary": result, "trials": [asdict(t) for t in chaos.trials],
        }, indent=2, default=str))  # fmt: skip
    return 0 if result["trials_with_problems"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
