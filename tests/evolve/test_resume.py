"""Resume: SIGKILL the `evolve run` controller mid-run, run it again: nothing lost, nothing recorded twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from run_support import controller_env, evolve_command, search_settings, settings_workspace

from evolve.store import Status, Store
from genome.repo import git_process

SEARCH = search_settings(baseline_seeds=2, max_seeds=2)


def _workspace(tmp_path: Path):
    return settings_workspace(tmp_path / "ws", SEARCH, run="r", profile="tiny", islands=2, budget=81920)


def _rows(db: Path):
    with Store(db, readonly=True) as store:
        individuals = {i.id: i for i in store.individuals("r")}
        evaluations = [
            (e.individual, e.seed, e.purpose.value, e.status, e.val_bpb) for e in store.evaluations(run="r")
        ]
        resumed = [e.payload for e in store.events("r", kind="resume")]
    return individuals, evaluations, resumed


def _kill_orphans(worktrees: Path) -> None:
    """The killed controller's training runs keep going on their own: end them (we started them)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
        except OSError:
            continue
        if worktrees in cwd.parents or cwd == worktrees:
            try:
                os.killpg(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_sigkill_mid_run_then_resume_loses_nothing_and_duplicates_nothing(tmp_path, tiny_data):
    ws = _workspace(tmp_path)
    db = ws.state_dir / "evolve.db"
    env = controller_env(tmp_path / "home", tiny_data)
    cmd = evolve_command(
        "run", "-w", str(ws.root), "--gpus", "cpu:2", "--max-experiments", "6", "--interval", "5"
    )
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    running: list[str] = []
    deadline = time.time() + 400
    try:
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.3)
            if not db.exists():
                continue
            individuals, _, _ = _rows(db)
            decided = [i for i in individuals.values() if i.parents and i.decision]
            running = [i.id for i in individuals.values() if i.status == Status.RUNNING and i.parents]
            if decided and running:
                break
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        assert running, "never caught the run with children in flight"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
        _kill_orphans(ws.state_dir / "worktrees")
    before_inds, before_evals, _ = _rows(db)
    assert any(i.status == Status.RUNNING for i in before_inds.values())  # killed with work in flight

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after_inds, after_evals, resumed = _rows(db)

    # nothing lost: every evaluation recorded before the kill is still there, unchanged
    assert set(before_evals) <= set(after_evals)
    # nothing twice: one row per (individual, seed, purpose), and no seed ran twice for anyone
    keys = [(ind, seed, purpose) for ind, seed, purpose, _, _ in after_evals]
    assert len(keys) == len(set(keys))
    assert len({(ind, seed) for ind, seed, _, _, _ in after_evals}) == len(after_evals)
    # the runs in flight at the kill went back to the queue and were run in the second session
    assert resumed and set(resumed[0]["requeued"]) >= set(running)
    for ind_id in running:
        assert any(e[0] == ind_id for e in after_evals) and after_inds[ind_id].status.is_finished()
    # the store and the evo/ branches hold the same individuals, each finished and decided once
    branches = git_process(ws.root, "for-each-ref", "--format=%(refname:short)", "refs/heads/evo/r/").stdout
    assert sorted(b.rsplit("/", 1)[1] for b in branches.decode().split()) == sorted(after_inds)
    trained = [i for i in after_inds.values() if i.parents and i.status != Status.REJECTED]
    assert len(trained) == 6
    assert all(i.status.is_finished() for i in after_inds.values())
    assert all(i.decision in ("accept", "reject") for i in trained)
    with Store(db, readonly=True) as store:
        decisions = [e.payload["id"] for e in store.events("r", kind="decision")]
    assert len(decisions) == len(set(decisions))  # decided exactly once each
    assert "session end: session=2, reason=done" in second.stdout


def test_sigterm_finishes_the_runs_in_flight_and_leaves_nothing_running(tmp_path, tiny_data):
    ws = _workspace(tmp_path)
    db = ws.state_dir / "evolve.db"
    cmd = evolve_command("run", "-w", str(ws.root), "--gpus", "cpu:1")
    proc = subprocess.Popen(
        cmd, env=controller_env(tmp_path / "home", tiny_data), stdout=subprocess.PIPE, text=True
    )
    running: list[str] = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not running and proc.poll() is None:
            time.sleep(0.3)
            if db.exists():
                individuals, _, _ = _rows(db)
                running = [i.id for i in individuals.values() if i.status == Status.RUNNING and i.parents]
        assert running, "never caught a child in flight"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped cleanly" in out
    individuals, evaluations, _ = _rows(db)
    assert not [i for i in individuals.values() if i.status == Status.RUNNING]
    assert any(e[0] == running[0] for e in evaluations)  # the child in flight was finished and recorded
    with Store(db, readonly=True) as store, store.transaction() as conn:
        (reason,) = conn.execute("SELECT stop_reason FROM sessions").fetchone()
    assert reason == "interrupted"
