"""Git and the store agree: branches deleted or moved by hand, a damaged or lost store; `evolve doctor --repair`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from run_support import controller_env, evolve_command, search_settings, settings_workspace

from evolve.store import Store
from genome.repo import MACHINE_IDENTITY, git_process, run_git

SEARCH = search_settings(
    baseline_seeds=2, max_seeds=2, operators=["optuna_tweak"], include=["EMB_LR", "HEAD_LR"], max_changes=2
)


def evolve(ws: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = evolve_command(*args, "-w", str(ws))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr


def run_more(ws: Path, n: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    return evolve(ws, "run", "--gpus", "cpu:2", "--max-experiments", str(n), "--interval", "30", env=env)


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, tiny_data):
    """A real run of 3 children, left stopped; each test works on its own copy."""
    root = tmp_path_factory.mktemp("doctor")
    ws = settings_workspace(
        root / "ws", SEARCH, commit=True, run="r", profile="tiny", islands=1, budget=81920
    )
    env = controller_env(root / "home", tiny_data)
    proc = run_more(ws.root, 3, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws.root, env


@pytest.fixture
def ws(evolved, tmp_path):
    root, env = evolved
    copy = tmp_path / "ws"
    shutil.copytree(root, copy, symlinks=True)
    return copy, env


def rows(ws: Path) -> dict:
    with Store(ws / ".evolve" / "evolve.db", readonly=True) as store:
        return {i.id: i for i in store.individuals()}


def branches(ws: Path) -> dict[str, str]:
    out = git_process(ws, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/evo/").stdout
    return dict(line.split() for line in out.decode().splitlines())


def elite(ws: Path):
    children = [i for i in rows(ws).values() if i.parents and i.status.value == "evaluated"]
    accepted = [i for i in children if i.decision == "accept"]
    return max(accepted or children, key=lambda i: i.id)


def test_a_run_takes_backups_at_its_start_and_end_and_the_doctor_finds_all_well(evolved):
    root, env = evolved
    healthy = evolve(root, "doctor", env=env)
    assert healthy.returncode == 0 and "ERROR" not in healthy.stdout, healthy.stdout + healthy.stderr
    assert "[ok] store: evolve.db passes integrity_check" in healthy.stdout
    assert "[ok] branches: every individual's branch is the commit the store scored" in healthy.stdout
    backups = sorted((root / ".evolve" / "backups").glob("evolve-*.db"))
    assert len(backups) == 2
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        reasons = [e.payload["reason"] for e in store.events("r", kind="backup")]
    assert reasons[0] == "session start" and len(reasons) == 2  # the end's event is in the next backup only
    with Store(backups[-1], readonly=True) as last:
        assert {i.id for i in last.individuals()} == set(rows(root))


def test_a_branch_deleted_by_hand_stops_the_run_and_the_export_until_repaired(ws):
    root, env = ws
    gone = elite(root)
    before_rows, before_branches = rows(root), branches(root)
    run_git(root, "branch", "-D", gone.branch)
    refused = one_line_error(run_more(root, 6, env))
    assert f"{gone.branch} was deleted" in refused and "evolve doctor --repair" in refused
    assert rows(root).keys() == before_rows.keys()  # nothing proposed, nothing trained
    assert set(branches(root)) == set(before_branches) - {gone.branch}  # no id handed out again
    exported = one_line_error(evolve(root, "export", gone.id, "--branch", "try", env=env))
    assert gone.id in exported
    diagnosis = evolve(root, "doctor", env=env)
    assert diagnosis.returncode == 1 and f"{gone.branch} was deleted" in diagnosis.stdout
    repaired = evolve(root, "doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"repaired: {gone.branch} restored at {gone.commit[:10]}" in repaired.stdout
    assert branches(root) == before_branches
    resumed = run_more(root, 6, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = rows(root)
    new = sorted(set(after) - set(before_rows))
    assert len(new) >= 3 and min(new) > max(before_rows)  # fresh ids only, above every old one
    assert {i.branch: i.commit for i in after.values()} == branches(root)


def test_a_branch_moved_by_hand_is_never_exported_under_the_old_score(ws):
    root, env = ws
    moved = elite(root)
    base = next(i for i in rows(root).values() if not i.parents)
    message = git_process(root, "log", "-1", "--format=%B", moved.commit).stdout  # same trailers, other code
    tree = run_git(root, "rev-parse", f"{base.commit}^{{tree}}")
    impostor = run_git(root, "commit-tree", tree, "-p", moved.commit, input=message, env=MACHINE_IDENTITY)
    run_git(root, "update-ref", f"refs/heads/{moved.branch}", impostor)
    exported = one_line_error(evolve(root, "export", moved.id, "--branch", "try", env=env))
    assert f"{moved.branch} was moved to {impostor[:10]}" in exported
    assert git_process(root, "rev-parse", "--verify", "--quiet", "refs/heads/try").returncode != 0
    refused = one_line_error(run_more(root, 5, env))
    assert f"{moved.branch} was moved" in refused
    repaired = evolve(root, "doctor", "--repair", env=env)
    assert repaired.returncode == 0 and "put back at" in repaired.stdout, repaired.stdout + repaired.stderr
    assert run_git(root, "rev-parse", f"refs/evolve/displaced/r/{moved.id}") == impostor  # kept, not lost
    ok = evolve(root, "export", moved.id, "--branch", "try", env=env)
    assert ok.returncode == 0, ok.stderr
    shipped = git_process(root, "show", "try:train.py").stdout
    assert shipped == git_process(root, "show", f"{moved.commit}:train.py").stdout


def test_a_damaged_store_is_restored_from_its_newest_backup_and_the_run_resumes(ws):
    root, env = ws
    db = root / ".evolve" / "evolve.db"
    before = rows(root)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    damaged = db.read_bytes()
    for command in (("top",), ("status",), ("show", "g0001")):
        assert "damaged" in one_line_error(evolve(root, *command, env=env))
    diagnosis = evolve(root, "doctor", env=env)
    assert diagnosis.returncode == 1 and "is damaged" in diagnosis.stdout
    repaired = evolve(root, "doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: restored evolve-" in repaired.stdout and "not recovered: evaluations" in repaired.stdout
    (kept,) = (root / ".evolve" / "damaged").glob("evolve-*.db")
    assert kept.read_bytes() == damaged  # moved aside, never deleted
    assert rows(root).keys() == before.keys()
    resumed = run_more(root, 5, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]


def test_a_lost_store_without_backups_is_rebuilt_from_git_trailers(ws):
    root, env = ws
    state = root / ".evolve"
    before = rows(root)
    shutil.rmtree(state / "backups")
    for path in state.glob("evolve.db*"):
        path.unlink()
    refused = one_line_error(run_more(root, 5, env))
    assert "missing" in refused and "evolve doctor --repair" in refused
    repaired = evolve(root, "doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "not recovered: every evaluation" in repaired.stdout
    after = rows(root)
    assert after.keys() == before.keys()
    for ind in before.values():  # the lineage and the code come back from the trailers
        got = after[ind.id]
        assert (got.commit, got.parents, got.operator, got.run) == (
            ind.commit,
            ind.parents,
            ind.operator,
            ind.run,
        )
    assert all(i.status.value in ("queued", "rejected") for i in after.values())
    resumed = run_more(root, 4, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert all(i.status.is_finished() for i in rows(root).values())
