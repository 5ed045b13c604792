"""Clear failures: a full disk, a read-only workspace, a locked store. One line, exit 1, nothing
half-written, the read commands still read, and `evolve run` resumes once the cause is gone.

The full disk is a real one: a small tmpfs mounted for the test (root only; skipped otherwise).
The read-only workspace is a read-only bind mount (chmod does not stop root)."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_support import BIGRAM, controller_env, evolve_command, search_settings, settings_workspace

from evolve.cli import main
from evolve.store import Status, Store
from evolve.storefile import file_problem
from genome.repo import git_process

SEARCH = search_settings(
    baseline_seeds=2, max_seeds=2, operators=["optuna_tweak"], include=["EMB_LR", "HEAD_LR"], max_changes=2
)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB filesystem of its own, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)):
        pytest.skip("needs root to mount a small tmpfs")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_view(tmp_path):
    """mount(source) -> a read-only bind mount of `source`; unmounted afterwards."""
    mounts = []

    def mount(source: Path) -> Path:
        view = tmp_path / f"ro{len(mounts)}"
        view.mkdir()
        if os.geteuid() != 0 or not _mount("--bind", str(source), str(view)):
            pytest.skip("needs root for a read-only bind mount")
        mounts.append(view)
        assert _mount("-o", "remount,ro,bind", str(view))
        return view

    yield mount
    for view in reversed(mounts):
        subprocess.run(["umount", "-l", str(view)], check=False)


def _workspace(where: Path):
    return settings_workspace(where, SEARCH, commit=True, run="r", profile="tiny", islands=1, budget=81920)


def _cmd(ws: Path, *args: str) -> list[str]:
    return evolve_command(*args, "-w", str(ws))


def _run(ws: Path, n: int) -> list[str]:
    return _cmd(ws, "run", "--gpus", "cpu:2", "--max-experiments", str(n), "--interval", "30")


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.count("\n") == 1 and last.startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in last, last
    return last


def _fill(disk: Path) -> Path:
    """Write a file until the disk is full."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:  # the last bytes too
            try:
                f.write(b"\0" * 4096)
            except OSError:
                break
    return filler


def _settled(ws: Path) -> None:
    """Nothing half-written: no temporary files, a store that passes integrity_check."""
    db = ws / ".evolve" / "evolve.db"
    leftovers = [p for p in (ws / ".evolve").rglob("*") if p.name.endswith((".tmp", ".restore"))]
    # prepare.report's own temporary result file, in the log folder of a run that was not
    # recorded (it runs again under a new folder), is prepare's to clean up, not the store's.
    leftovers = [
        p for p in leftovers if not (p.name.startswith("result-") and p.parent.parent.parent.name == "logs")
    ]
    assert leftovers == []
    assert file_problem(db, full=True) is None


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_there_is_room(
    small_disk, tiny_data, tmp_path
):
    ws = _workspace(small_disk / "ws")
    env = controller_env(tmp_path / "home", tiny_data)
    db = ws.state_dir / "evolve.db"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(_run(ws.root, 8), env=env, stdout=log, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if db.exists():
                with Store(db, readonly=True) as store:
                    if [i for i in store.individuals("r") if i.parents and i.decision]:
                        break
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        filler = _fill(small_disk)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    finished = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    _one_line_error(finished, "no space left", "evolve run")
    _settled(ws.root)
    top = subprocess.run(_cmd(ws.root, "top"), env=env, capture_output=True, text=True)
    assert top.returncode == 0, top.stderr  # reading needs no room
    with Store(db, readonly=True) as store:
        before = {i.id: i for i in store.individuals("r")}
    filler.unlink()
    resumed = subprocess.run(_run(ws.root, 8), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with Store(db, readonly=True) as store:
        after = {i.id: i for i in store.individuals("r")}
        failed = [e for e in store.evaluations(run="r") if e.status != "ok"]
    assert set(before) <= set(after)
    trained = [i for i in after.values() if i.parents and i.status != Status.REJECTED]
    assert len(trained) == 8 and all(i.status.is_finished() for i in after.values())
    assert failed == []  # no child was blamed for the full disk
    tips = git_process(
        ws.root, "for-each-ref", "--format=%(refname:short)", "refs/heads/evo/r/"
    ).stdout.decode()
    assert sorted(b.rsplit("/", 1)[1] for b in tips.split()) == sorted(after)


def test_a_read_only_workspace_still_reads_and_refuses_to_run_in_one_line(
    read_only_view, tiny_data, tmp_path
):
    ws = _workspace(tmp_path / "ws")
    env = controller_env(tmp_path / "home", tiny_data)
    first = subprocess.run(_run(ws.root, 2), env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    view = read_only_view(ws.root)
    child = next(i for i in Store(ws.state_dir / "evolve.db", readonly=True).individuals("r") if i.parents)
    for command in (
        ("status",),
        ("status", "--json"),
        ("top",),
        ("show", child.id),
        ("lineage", child.id),
        ("doctor",),
    ):
        proc = subprocess.run(_cmd(view, *command), env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    refused = _one_line_error(subprocess.run(_run(view, 4), env=env, capture_output=True, text=True))
    assert "read-only" in refused
    _one_line_error(
        subprocess.run(
            _cmd(view, "export", child.id, "--branch", "x"), env=env, capture_output=True, text=True
        )
    )
    import analysis

    assert len(analysis.lineage(view)) == len(analysis.lineage(ws.root))
    resumed = subprocess.run(_run(ws.root, 4), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]


def test_a_locked_store_is_one_line_and_reading_goes_on(tmp_path, use_tiny_data, monkeypatch):
    ws = _workspace(tmp_path / "ws")
    db = ws.state_dir / "evolve.db"
    Store(db).close()
    monkeypatch.setattr("evolve.store.BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    holder.execute("CREATE TABLE held (x)")
    runner = CliRunner()
    try:
        result = runner.invoke(main, ["run", "-w", str(ws.root), "--gpus", "cpu"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert "is locked by another process" in result.output and "Traceback" not in result.output
        reading = runner.invoke(main, ["doctor", "-w", str(ws.root)])
        assert "store: evolve.db passes integrity_check" in reading.output, reading.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    done = runner.invoke(
        main, ["run", "-w", str(ws.root), "--gpus", "cpu", "--max-experiments", "1", "--interval", "30"]
    )
    assert done.exit_code == 0, done.output


# --- the environment's faults are not the genome's --------------------------------------------------


def _data_copy(tiny_data: Path, where: Path) -> Path:
    shutil.copytree(tiny_data, where)
    return where


def _baseline_runs(ws: Path) -> list:
    with Store(ws / ".evolve" / "evolve.db", readonly=True) as store:
        return store.evaluations("g0000")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_data_is_the_environment_s_fault_and_costs_the_baseline_nothing(
    damage, tiny_data, tmp_path
):
    data = _data_copy(tiny_data, tmp_path / "data")
    shard = data / "train.bin"
    if damage == "missing":
        shard.unlink()
    else:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    ws = _workspace(tmp_path / "ws")
    env = controller_env(tmp_path / "home", data)
    refused = _one_line_error(
        subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=300)
    )
    assert "evolve prepare --profile tiny" in refused and str(data) in refused
    assert ("train shard missing" if damage == "missing" else "does not match its manifest") in refused
    assert "fix train.py" not in refused
    if (ws.state_dir / "evolve.db").exists():
        assert _baseline_runs(ws.root) == []  # nothing recorded against the baseline
    # mended: the run starts, and the baseline's seeds are its first ones
    shutil.rmtree(data)
    _data_copy(tiny_data, data)
    resumed = subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = _baseline_runs(ws.root)
    assert sorted(e.seed for e in runs) == [42, 43] and all(e.ok for e in runs)


BROKEN = "raise SystemExit('this train.py is broken on purpose')\n"


def test_a_baseline_whose_train_py_is_broken_is_blamed_after_autoevolve_s_own_train_py_ran(
    tiny_data, tmp_path
):
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN + BIGRAM.read_text())
    ws = settings_workspace(tmp_path / "ws", SEARCH, commit=True, train_py=broken, run="r", profile="tiny",
                            islands=1, budget=65536)  # fmt: skip
    env = controller_env(tmp_path / "home", tiny_data)
    proc = subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=600)
    refused = _one_line_error(proc, "the baseline keeps failing", "autoevolve's own train.py runs here")
    assert "the fault is in this workspace's train.py" in refused and "fix it" in refused
    assert len(_baseline_runs(ws.root)) == 2 * 2 + 2  # its attempts, all failed


def test_when_autoevolve_s_own_train_py_fails_too_the_machine_is_blamed_and_its_failures_do_not_count(
    tiny_data, tmp_path
):
    # Damage the preflight cannot see (it only stats the files): the offsets' contents. Every run
    # fails in the harness's data server, whatever the code.
    data = _data_copy(tiny_data, tmp_path / "data")
    idx = data / "train.idx"
    idx.write_bytes(b"\xff" * idx.stat().st_size)
    ws = _workspace(tmp_path / "ws")
    env = controller_env(tmp_path / "home", data)
    proc = subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=600)
    refused = _one_line_error(proc, "the baseline keeps failing", "and so does autoevolve's own train.py")
    assert "the machine or the harness is at fault, not train.py" in refused and "fix train.py" not in refused
    failed = _baseline_runs(ws.root)
    assert len(failed) == 2 * 2 + 2 and not any(e.ok for e in failed)
    # mended, the same command: the failures of the broken session do not count against the
    # baseline (a session of its own attempts), it gets its seeds, and the run goes on
    shutil.rmtree(data)
    _data_copy(tiny_data, data)
    resumed = subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    ok = [e for e in _baseline_runs(ws.root) if e.ok]
    assert len(ok) == 2 and min(e.seed for e in ok) > max(e.seed for e in failed)


def test_no_isolation_tool_is_the_machine_s_fault_with_the_fix_and_nothing_recorded(tiny_data, tmp_path):
    # A PATH with git and this Python but no bwrap on it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "env", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    ws = _workspace(tmp_path / "ws")
    env = controller_env(tmp_path / "home", tiny_data)
    env["PATH"] = f"{Path(sys.executable).parent}:{bin_dir}"
    proc = subprocess.run(_run(ws.root, 1), env=env, capture_output=True, text=True, timeout=300)
    refused = _one_line_error(proc, "bubblewrap (bwrap) is not installed", "apt-get install bubblewrap")
    assert "fix train.py" not in refused
    if (ws.state_dir / "evolve.db").exists():
        assert _baseline_runs(ws.root) == []
