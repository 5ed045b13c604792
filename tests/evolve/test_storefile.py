"""The store's file: a damaged or foreign database is refused on open (never rebuilt over), online backups."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from evolve.cli import main
from evolve.errors import EvolveError
from evolve.store import Evaluation, Purpose, Store
from evolve.storefile import Backups, StoreDamaged
from genome.workspace import init_workspace


def _filled(ws, run: str = "r") -> Path:
    """A store with a run, its baseline, a child and their evaluations, as the engine writes them."""
    db = ws.state_dir / "evolve.db"
    base = ws.repo().baseline()
    with Store(db) as store:
        store.add_run(run, strategy="population", profile="tiny", settings={"depth": 2})
        store.add_individual(id=base.id, run=run, commit=base.commit, branch=base.branch, operator="baseline")
        for seed in (42, 43):
            store.record_evaluation(
                Evaluation(base.id, 2, 3.0, seed, "tiny", "ok", Purpose.BASELINE, val_bpb=2.5 + seed / 1000)
            )
        store.set_decision(base.id, "accept")
        for n in range(200):  # enough rows for several pages
            store.add_event("filler", {"n": n, "text": "x" * 200}, run=run)
    return db


@pytest.fixture
def ws(tmp_path, use_tiny_data):
    return init_workspace(tmp_path / "ws", run="r", profile="tiny", budget=81920)


def _cli(*args: str, ws) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "-w", str(ws.root)])
    return result.exit_code, result.output


def _page_size(db: Path) -> int:
    return int.from_bytes(db.read_bytes()[16:18], "big")


def _damage(db: Path, how: str) -> None:
    data = bytearray(db.read_bytes())
    if how == "truncated":
        db.write_bytes(bytes(data[: len(data) // 2 + 100]))
    elif how == "garbage":
        page = _page_size(db)
        data[2 * page : 4 * page] = os.urandom(2 * page)  # b-tree pages in the middle of the file
        db.write_bytes(bytes(data))
    else:
        raise ValueError(how)


def _checkpoint(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_store_is_refused_with_the_newest_good_backup_and_never_rebuilt(ws, how):
    db = _filled(ws)
    backups = Backups(db)
    good = backups.make("test")
    _checkpoint(db)
    _damage(db, how)
    damaged = db.read_bytes()
    for command in (["run", "--gpus", "cpu"], ["top"], ["status"]):
        code, out = _cli(*command, ws=ws)
        assert code == 1 and out.count("\n") == 1 and "Traceback" not in out, (command, out)
        assert "damaged" in out and str(good) in out and "evolve doctor --repair" in out
    assert db.read_bytes() == damaged  # not rebuilt over, not "repaired" behind the user's back
    with pytest.raises(StoreDamaged, match="newest good backup"):
        Store(db)


def test_a_foreign_database_is_refused(ws):
    db = ws.state_dir / "evolve.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    before = db.read_bytes()
    for command in (["run", "--gpus", "cpu"], ["top"]):
        code, out = _cli(*command, ws=ws)
        assert code == 1 and out.count("\n") == 1 and "not an autoevolve store" in out, out
    assert db.read_bytes() == before
    db.write_bytes(b"not sqlite at all\n" * 100)
    code, out = _cli("run", "--gpus", "cpu", ws=ws)
    assert code == 1 and "not an autoevolve store" in out and "Traceback" not in out


def test_a_missing_store_with_backups_is_refused_not_started_afresh(ws):
    db = _filled(ws)
    good = Backups(db).make("test")
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    for command in (["run", "--gpus", "cpu"], ["top"], ["status"]):
        code, out = _cli(*command, ws=ws)
        assert code == 1 and out.count("\n") == 1 and "missing" in out and str(good) in out, out
    assert not db.exists()


def test_backups_are_online_copies_the_last_k_kept_and_a_damaged_one_skipped(ws, tmp_path):
    db = _filled(ws)
    backups = Backups(db, keep=3)
    made = [backups.make(f"b{n}") for n in range(5)]
    assert backups.list() == made[-3:] and not any(p.exists() for p in made[:2])
    with Store(made[-1], readonly=True) as copy:  # a whole store, readable as one
        assert [r.name for r in copy.runs()] == ["r"] and copy.scores(2)["g0000"].n == 2
    made[-1].write_bytes(made[-1].read_bytes()[:1000])  # the newest backup is damaged itself
    assert backups.newest_good() == made[-2]
    # a backup taken while a writer holds a transaction open sees the last committed state
    with Store(db) as store, store.transaction():
        store.add_event("uncommitted", run="r")
        during = backups.make("during")
    with Store(during, readonly=True) as copy:
        assert copy.events("r", kind="uncommitted") == []


def test_refusals_are_evolve_errors_with_one_line(ws):
    db = _filled(ws)
    _checkpoint(db)
    _damage(db, "truncated")
    with pytest.raises(EvolveError) as info:
        Store(db, readonly=True)
    assert "\n" not in str(info.value) and "no backup" in str(info.value)


def test_a_run_backs_up_every_n_minutes_and_at_the_end_keeping_the_last_k(tmp_path, use_tiny_data):
    from evolve.engine import Engine, EngineConfig
    from evolve.scheduler import StopConditions
    from genome.settings import SETTINGS_FILE
    from trainer import LocalExecutor

    bigram = Path(__file__).parent / "data" / "train_bigram.py"
    ws = init_workspace(tmp_path / "ws", run="r", profile="tiny", islands=1, budget=81920, train_py=bigram)
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write('\n[search]\nbaseline_seeds = 2\nmax_seeds = 2\noperators = ["optuna_tweak"]\n'
                "\n[store]\nbackup_minutes = 0.02\nbackups_kept = 3\n")  # fmt: skip
    config = EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=3))
    assert (config.backup_minutes, config.backups_kept) == (0.02, 3)
    with LocalExecutor.cpu(2) as executor:
        engine = Engine(ws, config, executor)
        engine.run(install_signals=False)
        reasons = [e.payload["reason"] for e in engine.store.events("r", kind="backup")]
        engine.close()
    assert reasons[0] == "session start" and reasons[-1] == "session end"
    assert reasons.count("every 0.02 minutes") >= 1  # 1.2 s apart, in a run of several seconds
    kept = Backups(ws.state_dir / "evolve.db").list()
    assert len(kept) == 3
    with Store(kept[-1], readonly=True) as last:  # the end's copy holds every individual
        assert len(last.individuals("r")) == len(
            Store(ws.state_dir / "evolve.db", readonly=True).individuals("r")
        )
