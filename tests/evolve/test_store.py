"""The SQLite store: migrations, atomic transactions, idempotent results, queue, concurrency, read-only."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from evolve.errors import EvolveError
from evolve.migrations import MIGRATIONS, Migration
from evolve.store import Evaluation, Purpose, Status, Store
from evolve.storefile import StoreError


def ev(ind: str, seed: int, bpb: float | None, status: str = "ok", purpose: str = "search", depth: int = 4):
    return Evaluation(
        individual=ind, depth=depth, budget=5.0, seed=seed, profile="tiny", status=status,
        purpose=Purpose(purpose), val_bpb=bpb, metrics={"val_bpb": bpb, "num_steps": 10},
        data_fingerprint="fp", device="cpu", wall_seconds=6.0, training_seconds=5.0,
        torch_version="2.13", gpu_name="", error_tail="" if status == "ok" else "boom",
    )  # fmt: skip


@pytest.fixture
def db(tmp_path):
    return tmp_path / ".evolve" / "evolve.db"


@pytest.fixture
def store(db):
    s = Store(db)
    s.add_run("r1", strategy="population", profile="tiny", settings={"islands": 2})
    s.add_individual(id="base", run="r1", commit="c0", operator="baseline", description="baseline")
    yield s
    s.close()


def child(store: Store, cid: str, parents=("base",), **kw):
    return store.add_individual(
        id=cid, run="r1", commit=f"sha-{cid}", parents=parents, operator=kw.pop("operator", "mutate"), **kw
    )


def test_new_store_is_wal_with_foreign_keys_and_reopening_applies_nothing(db):
    first = Store(db)
    assert first.applied == [m.version for m in MIGRATIONS]
    conn = first._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    first.close()
    again = Store(db)
    assert again.applied == []
    rows = again._conn().execute("SELECT version, name, applied_at FROM migrations").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(m.version, m.name) for m in MIGRATIONS] and rows[0][2] > 0
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        again.record_evaluation(ev("nobody", 0, 1.0))


def test_a_future_migration_is_applied_exactly_once(db):
    Store(db).close()
    calls = []

    def v2(conn):
        calls.append(1)
        conn.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, busy_seconds REAL)")

    nxt = MIGRATIONS[-1].version + 1
    future = (*MIGRATIONS, Migration(nxt, "devices", v2))
    upgraded = Store(db, migrations=future)
    assert upgraded.applied == [nxt] and upgraded.schema_version() == nxt
    upgraded._conn().execute("INSERT INTO devices VALUES ('cuda:0', 1.5)")
    upgraded.close()
    assert Store(db, migrations=future).applied == []
    assert calls == [1]
    # An older autoevolve refuses a store written by a newer one instead of corrupting it.
    with pytest.raises(EvolveError, match="upgrade autoevolve"):
        Store(db)


def test_a_failing_migration_leaves_the_previous_version(db):
    Store(db).close()

    def broken(conn):
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        Store(db, migrations=(*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, "broken", broken)))
    s = Store(db)
    assert s.schema_version() == MIGRATIONS[-1].version
    assert not s._conn().execute("SELECT 1 FROM sqlite_master WHERE name = 'half'").fetchone()


def test_transaction_rolls_back_everything_on_error(store, db):
    with pytest.raises(RuntimeError):
        with store.transaction():
            child(store, "a")
            store.record_evaluation(ev("a", 1, 1.0))
            store.add_event("child_done", {"id": "a"}, run="r1")
            raise RuntimeError("controller killed mid-change")
    fresh = Store(db, readonly=True)
    assert fresh.get("a") is None
    assert fresh.evaluations(run="r1") == []
    assert fresh.events("r1") == []
    # A change that fails half-way on its own (unknown parent) leaves no orphan row either.
    with pytest.raises(sqlite3.IntegrityError):
        child(store, "orphan", parents=("base", "missing"))
    assert store.get("orphan") is None and store.lineage("orphan") == []


def test_record_evaluation_is_idempotent_and_sets_status(store):
    child(store, "a", status="queued")
    store.claim("r1")
    assert store.record_evaluation(ev("a", 1, 1.25)) is True
    assert store.record_evaluation(ev("a", 1, 1.25)) is False  # resume reports the same run again
    assert len(store.evaluations("a")) == 1
    a = store.get("a")
    assert a.status == Status.EVALUATED and a.finished is not None
    # A second seed is a second row; a crash on a re-evaluation keeps the ok one.
    store.set_status("a", "queued")
    store.claim("r1")
    assert store.record_evaluation(ev("a", 2, None, status="crash", purpose="reeval"))
    assert store.get("a").status == Status.EVALUATED
    assert store.seeds_used("a", 4) == [1, 2]
    child(store, "b")
    store.record_evaluation(ev("b", 1, None, status="oom"))
    b = store.get("b")
    assert b.status == Status.FAILED
    stored = store.evaluations("b")[0]
    assert stored.status == "oom" and stored.error_tail == "boom" and stored.metrics["num_steps"] == 10


def test_validation_runs_do_not_change_status_or_search_scores(store):
    store.record_evaluation(ev("base", 0, 1.5))
    store.record_evaluation(ev("base", 0, 0.9, purpose="validation", depth=24))
    assert store.get("base").status == Status.EVALUATED
    assert store.scores(4, "r1")["base"].n == 1
    assert "base" not in store.scores(24, "r1")
    assert store.scores(24, "r1", purposes=["validation"])["base"].mean == 0.9


def test_illegal_status_move_raises_and_changes_nothing(store):
    child(store, "a", status="rejected", guard_reason="reads validation data")
    with pytest.raises(ValueError, match="cannot go from rejected to queued"):
        store.set_status("a", "queued")
    a = store.get("a")
    assert a.status == Status.REJECTED and a.guard_reason == "reads validation data"


def test_claim_takes_priority_then_age_and_never_twice_across_threads(store):
    for i in range(40):
        child(store, f"c{i:02d}", status="queued")
    child(store, "urgent", status="queued", priority=5)
    assert store.claim("r1").id == "urgent"
    assert store.claim("r1").id == "c00"
    claimed: list[str] = []
    lock = threading.Lock()

    def worker():
        while (ind := store.claim("r1")) is not None:
            with lock:
                claimed.append(ind.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"c{i:02d}" for i in range(1, 40)]
    assert store.claim("r1") is None


def test_work_in_flight_at_a_crash_is_requeued_on_resume(store, db):
    for cid in ("a", "b", "c"):
        child(store, cid, status="queued")
    store.claim("r1")
    store.claim("r1")
    store.close()  # the controller dies here, a and b were running
    resumed = Store(db)
    assert [i.id for i in resumed.in_flight("r1")] == ["a", "b"]
    assert resumed.requeue_in_flight("r1") == ["a", "b"]
    assert resumed.in_flight("r1") == []
    assert [resumed.claim("r1").id for _ in range(3)] == ["a", "b", "c"]


def test_scores_and_leaderboard(store):
    for seed, bpb in enumerate([1.00, 1.02, 1.04]):
        store.record_evaluation(ev("base", seed, bpb, purpose="baseline"))
    child(store, "a", description="wider MLP")
    store.record_evaluation(ev("a", 7, 0.95))
    store.record_evaluation(ev("a", 8, 0.97, purpose="reeval"))
    child(store, "b")
    store.record_evaluation(ev("b", 7, 0.90))
    child(store, "broken")
    store.record_evaluation(ev("broken", 7, None, status="crash"))
    scores = store.scores(4, "r1")
    assert scores["base"].n == 3 and scores["base"].mean == pytest.approx(1.02)
    assert scores["base"].std == pytest.approx(0.02)
    assert scores["a"].mean == pytest.approx(0.96) and "broken" not in scores
    board = store.leaderboard(4, "r1")
    assert [r.individual.id for r in board] == ["b", "a", "base"]
    assert board[1].individual.description == "wider MLP" and board[1].score.n == 2
    store.set_decision("a", "accept")
    assert [r.individual.id for r in store.leaderboard(4, "r1", accepted_only=True)] == ["a"]


def test_operator_stats_credit_children_that_beat_their_parent(store):
    store.record_evaluation(ev("base", 0, 1.0))
    for cid, op, bpb in [("m1", "mutate", 0.9), ("m2", "mutate", 1.1), ("x1", "merge", 0.95)]:
        child(store, cid, operator=op, kind="merge" if op == "merge" else None)
        store.record_evaluation(ev(cid, 0, bpb))
    child(store, "m3", status="rejected", guard_reason="syntax error")
    assert store.lineage("x1") == [("base", "merge")]
    assert store.get("m1").generation == 1
    stats = store.operator_stats("r1")
    assert stats["mutate"] == {"children": 3, "evaluated": 2, "improvements": 1, "failures": 1}
    assert stats["merge"] == {"children": 1, "evaluated": 1, "improvements": 1, "failures": 0}
    assert store.children_counts("r1") == {"base": 4}


def test_operator_stats_agree_with_the_schemas_view_and_stay_linear(store):
    """Store.operator_stats computes the `operator_stats` view's numbers without its quadratic subquery."""
    import random

    rng = random.Random(3)
    store.record_evaluation(ev("base", 0, 1.0))
    store.record_evaluation(ev("base", 0, 0.9, depth=8))  # a second search depth: one row per depth
    ids = ["base"]
    for k in range(60):
        parents = tuple(rng.sample(ids, 2)) if k % 5 == 4 else (rng.choice(ids),)
        op = rng.choice(["mutate", "tweak", "merge"]) if len(parents) == 1 else "cross"
        status = "rejected" if k % 11 == 10 else "queued"
        child(store, f"c{k}", parents=parents, operator=op, status=status)
        ids.append(f"c{k}")
        if status == "queued":
            for depth in (4, 8) if k % 3 == 0 else (4,):
                bpb = None if k % 7 == 6 else rng.uniform(0.8, 1.1)
                store.record_evaluation(ev(f"c{k}", 0, bpb, status="ok" if bpb else "crash", depth=depth))
            if k % 4 == 0:
                store.record_evaluation(ev(f"c{k}", 1, rng.uniform(0.8, 1.1), purpose="reeval"))
                store.record_evaluation(ev(f"c{k}", 0, 0.5, purpose="validation", depth=12))
    view = {
        r["operator"]: {k: int(r[k] or 0) for k in ("children", "evaluated", "improvements", "failures")}
        for r in store._query("SELECT * FROM operator_stats WHERE run = 'r1'")
    }
    assert store.operator_stats("r1") == view and sum(v["improvements"] for v in view.values()) > 5
    assert store.operator_stats("other") == {}


def test_find_by_code_hash_only_returns_evaluated_individuals(store):
    child(store, "a", code_hash="h1", status="queued")
    assert store.find_by_code_hash("h1") is None
    assert store.find_by_code_hash("h1", statuses=["queued", "running"]).id == "a"
    store.claim("r1")
    store.record_evaluation(ev("a", 0, 1.0))
    assert store.find_by_code_hash("h1", run="r1").id == "a"
    assert store.find_by_code_hash("h1", run="other") is None


def test_events_llm_calls_insights_and_disk_use(store, tmp_path):
    first = store.add_event("start", {"gpus": [0, 1]}, run="r1")
    store.add_event("migration", {"member": "base", "source": 0, "target": 1}, run="r1")
    assert [e.kind for e in store.events("r1")] == ["start", "migration"]
    assert [e.payload for e in store.events("r1", after_id=first)] == [
        {"member": "base", "source": 0, "target": 1}
    ]
    store.add_llm_call(
        model="gpt", ok=True, prompt_tokens=100, completion_tokens=20, cost=0.01, latency=2.0, run="r1"
    )
    failed = store.add_llm_call(model="gpt", ok=False, error="429", latency=4.0, run="r1")
    store.assign_llm_calls([failed], "base")
    (mine,) = store.llm_calls(individual="base")
    assert mine.id == failed and mine.ok is False and mine.error == "429" and mine.model == "gpt"
    assert [c.ok for c in store.llm_calls(run="r1")] == [True, False] and store.llm_calls(run="r2") == []
    spend = store.llm_spend("r1")
    assert spend["calls"] == 2 and spend["failures"] == 1 and spend["prompt_tokens"] == 100
    assert spend["cost"] == pytest.approx(0.01) and spend["mean_latency"] == pytest.approx(3.0)
    store.add_insight("higher LR helps at depth 4", run="r1")
    store.add_insight("GELU beats ReLU^2 rarely", run="r1")
    assert store.insights("r1", limit=1) == ["GELU beats ReLU^2 rarely"]
    log = tmp_path / "run.log"
    log.write_text("x" * 1000)
    e = ev("base", 0, 1.0)
    store.record_evaluation(Evaluation(**{**e.__dict__, "log_path": str(log)}))
    use = store.disk_use()
    assert use.log_bytes == 1000 and use.log_files == 1 and use.db_bytes > 0
    assert use.total_bytes == use.db_bytes + 1000


def test_runs_are_unique_unless_resumed(store):
    with pytest.raises(EvolveError, match="already exists"):
        store.add_run("r1", strategy="ratchet", profile="tiny")
    assert store.add_run("r1", strategy="ratchet", profile="tiny", exist_ok=True).settings == {"islands": 2}
    assert [r.name for r in store.runs()] == ["r1"]


def test_evaluation_from_the_trainers_result_dict(store):
    """The trainer's `RunResult.to_dict()` is flat; a nested `provenance` dict is read too."""
    result = {
        "status": "ok", "reason": "", "metrics": {"val_bpb": 1.11, "training_seconds": 4.5, "depth": 4},
        "wall_seconds": 7.0, "log_path": "/tmp/x.log", "error_tail": "", "returncode": 0,
        "depth": 4, "budget": 5.0, "seed": 3, "profile": "tiny", "devices": ["cuda:0", "cuda:1"],
        "data_fingerprint": "abc", "torch_version": "2.13", "gpu_name": "H100", "commit": "c0", "extra": {},
    }  # fmt: skip
    e = Evaluation.from_result("base", result, purpose="baseline")
    assert (e.depth, e.seed, e.budget, e.device, e.gpu_name, e.val_bpb) == (
        4,
        3,
        5.0,
        "cuda:0,cuda:1",
        "H100",
        1.11,
    )
    assert (e.training_seconds, e.data_fingerprint, e.purpose) == (4.5, "abc", Purpose.BASELINE)
    assert store.record_evaluation(e)
    crash = Evaluation.from_result("base", {**result, "status": "crash", "gpu_name": None}, purpose="search")
    assert crash.val_bpb is None and not crash.ok and crash.gpu_name == ""
    nested = {
        "status": "ok",
        "metrics": {"val_bpb": 1.0},
        "provenance": {"depth": 8, "seed": 1, "devices": "cpu"},
    }
    from_nested = Evaluation.from_result("base", nested, purpose="search")
    assert (from_nested.depth, from_nested.seed, from_nested.device) == (8, 1, "cpu")


def test_readonly_store_reads_but_cannot_write(store, db, tmp_path):
    store.record_evaluation(ev("base", 0, 1.0))
    ro = Store(db, readonly=True)
    assert ro.scores(4, "r1")["base"].mean == 1.0
    with pytest.raises(StoreError, match="read-only"):
        ro.add_event("x")
    assert ro._conn().execute("PRAGMA query_only").fetchone()[0] == 1  # a second lock on top of mode=ro
    with pytest.raises(EvolveError, match="no store"):
        Store(tmp_path / "nowhere" / "evolve.db", readonly=True)


WRITER = textwrap.dedent(
    """
    import sys, time
    from evolve.store import Evaluation, Store
    store = Store(sys.argv[1])
    for i in range(int(sys.argv[2])):
        with store.transaction():
            store.add_individual(id=f"w{i}", run="r1", commit="x", parents=["base"], status="running")
            store.record_evaluation(Evaluation(individual=f"w{i}", depth=4, budget=5.0, seed=i,
                                               profile="tiny", status="ok", val_bpb=1.0 + i / 1000))
            store.add_event("child_done", {"id": f"w{i}"}, run="r1")
        time.sleep(0.002)
    """
)


def test_a_second_process_reads_consistent_snapshots_while_a_run_writes(store, db):
    n = 150
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n)])
    reader = Store(db, readonly=True)
    seen = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with reader.transaction() as conn:  # one snapshot for the three counts
                counts = [
                    conn.execute(sql).fetchone()[0]
                    for sql in (
                        "SELECT COUNT(*) FROM individuals WHERE id LIKE 'w%'",
                        "SELECT COUNT(*) FROM evaluations",
                        "SELECT COUNT(*) FROM events WHERE kind = 'child_done'",
                    )
                ]
            assert counts[0] == counts[1] == counts[2], f"half-written change seen: {counts}"
            seen.append(counts[0])
            if counts[0] == n:
                break
            time.sleep(0.001)
    finally:
        assert writer.wait(timeout=60) == 0
    assert seen == sorted(seen) and seen[-1] == n
    assert any(0 < k < n for k in seen), "the reader never ran while the writer was writing"


def test_scores_are_read_incrementally_and_a_rolled_back_change_leaves_no_trace(store, db):
    for i, cid in enumerate(("a", "b")):
        child(store, cid)
        store.record_evaluation(ev(cid, 0, 1.0 + i))
    assert store.scores(4, "r1")["a"].mean == 1.0 and store.noise_floor(4, "r1") is None
    store.record_evaluation(ev("a", 1, 1.2))  # only this row is read now
    assert store.scores(4, "r1")["a"].n == 2 and store.noise_floor(4, "r1") == pytest.approx(0.1414, abs=1e-4)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.record_evaluation(ev("b", 1, 9.0))
            assert store.scores(4, "r1")["b"].n == 2  # seen inside the change ...
            raise RuntimeError("killed mid-change")
    assert store.scores(4, "r1")["b"].n == 1  # ... and gone with it
    other = Store(db)  # a writer elsewhere: its rows are read too
    other.record_evaluation(ev("b", 2, 2.2))
    fresh = Store(db, readonly=True)
    assert store.scores(4, "r1") == fresh.scores(4, "r1") and store.values(4) == fresh.values(4)
    assert store.noise_floor(4, "r1") == fresh.noise_floor(4, "r1")
    assert store.values(4, "r1")["b"] == [2.0, 2.2]


def test_the_newest_events_are_read_without_reading_them_all(store):
    for n in range(10):
        store.add_event("tick", {"n": n}, run="r1")
    assert [e.payload["n"] for e in store.events("r1", last=3)] == [7, 8, 9]
    assert [e.payload["n"] for e in store.events("r1", kind="tick", limit=2)] == [0, 1]


def test_notes_of_an_older_store_become_versions_and_llm_calls_gain_outcomes(db):
    old = Store(db, migrations=tuple(m for m in MIGRATIONS if m.version < 20))
    old.add_run("r1", strategy="population", profile="tiny")
    conn = old._conn()
    for run, text in (("r1", "first"), (None, "elsewhere"), ("r1", "second")):
        conn.execute("INSERT INTO meta_insights (time, run, text) VALUES (0, ?, ?)", (run, text))
    conn.execute("INSERT INTO llm_calls (time, run, model, ok) VALUES (0, 'r1', 'm1', 1)")
    old.close()
    new = Store(db)
    assert new.applied == [m.version for m in MIGRATIONS if m.version >= 20]
    assert [(v.version, v.text) for v in new.insight_versions("r1")] == [(1, "first"), (2, "second")]
    assert new.add_insight("third", run="r1", items=[{"kind": "helped", "text": "x", "cites": []}]) == 3
    (latest,) = new.insight_versions("r1", limit=1)
    assert (
        latest.text == "third" and latest.items[0]["kind"] == "helped" and new.insights("r1")[-1] == "third"
    )
    (call,) = new.llm_calls("r1")
    assert (call.purpose, call.outcome) == ("", "") and new.llm_text(call.id) is None  # not recorded then
    kept = new.add_llm_call(model="m1", ok=True, run="r1", purpose="repair", prompt=[{"role": "user", "content": "hi"}],
                            answer="DESCRIPTION: x")  # fmt: skip
    new.settle_llm_call(kept, "unusable", "no SEARCH/REPLACE blocks found")
    assert new.llm_text(kept) == ([{"role": "user", "content": "hi"}], "DESCRIPTION: x")
    assert new.llm_spend("r1")["unusable"] == 1
    with pytest.raises(ValueError):
        new.settle_llm_call(kept, "fine")


def test_scores_of_a_run_stay_under_its_first_ok_runs_key(store, db):
    """A time budget's scores compare only on one device model, and never across budgets; the key
    is fixed by the first ok run (the baseline's first seed); a token budget pools device models."""
    from dataclasses import replace

    from evolve.judging import Evidence
    from evolve.store import ScoreKey

    on = lambda e, gpu, **kw: replace(e, gpu_name=gpu, budget_unit="seconds", **kw)  # noqa: E731
    store.record_evaluation(on(ev("base", 0, 1.0, status="crash"), "NVIDIA A100-SXM4-80GB"))
    assert store.score_key(4, "r1") is None  # a failed run fixes nothing
    store.record_evaluation(on(ev("base", 1, 1.0, purpose="baseline"), "NVIDIA H200"))
    store.record_evaluation(on(ev("base", 2, 1.2, purpose="baseline"), "NVIDIA H200"))
    store.record_evaluation(on(ev("base", 3, 0.5, purpose="baseline"), "NVIDIA A100-SXM4-80GB"))
    child(store, "a")
    store.record_evaluation(on(ev("a", 1, 0.9), "NVIDIA A100-SXM4-80GB"))  # another card
    store.record_evaluation(on(ev("a", 2, 0.8), "NVIDIA H200", budget=10.0))  # another budget
    child(store, "b")
    store.record_evaluation(on(ev("b", 1, 1.1), "NVIDIA H200"))
    key = store.score_key(4, "r1")
    assert key == ScoreKey(4, 5.0, "seconds", "NVIDIA H200") and str(key) == "depth 4, 5 s on NVIDIA H200"
    assert store.values(4, "r1") == {"base": [1.0, 1.2], "b": [1.1]}
    assert "a" not in store.scores(4, "r1") and [r.individual.id for r in store.leaderboard(4, "r1")] == [
        "base",
        "b",
    ]
    assert store.noise_floor(4, "r1") == pytest.approx(0.1414, abs=1e-4)  # without the A100's 0.5
    assert store.set_aside(4, "r1") == {
        ScoreKey(4, 5.0, "seconds", "NVIDIA A100-SXM4-80GB"): 2, ScoreKey(4, 10.0, "seconds", "NVIDIA H200"): 1
    }  # fmt: skip
    fresh = Store(db, readonly=True)  # the same from a reader's fresh tally
    assert fresh.score_key(4, "r1") == key and fresh.values(4, "r1") == store.values(4, "r1")
    # the judge reads the same: a's runs elsewhere are neither its scores nor its failures, and
    # the baseline's failure on the A100 is not counted against it
    ev_ = Evidence(store, "r1", 4)
    assert ev_.key == key and ev_.runs("a") == {} and sorted(ev_.runs("base")) == [1, 2]
    # under a token budget the card does not matter (the same work anywhere), the budget does
    store.add_run("r2", strategy="population", profile="tiny")
    for i, (gpu, budget) in enumerate((("NVIDIA H200", 5.0), ("cpu", 5.0), ("NVIDIA H200", 6.0))):
        store.add_individual(id=f"t{i}", run="r2", commit=f"t{i}")
        store.record_evaluation(
            replace(ev(f"t{i}", 1, 1.0 + i), gpu_name=gpu, budget_unit="tokens", budget=budget)
        )
    assert store.score_key(4, "r2") == ScoreKey(4, 5.0, "tokens", "") and set(store.scores(4, "r2")) == {
        "t0",
        "t1",
    }


def test_a_key_names_the_cpu_model_of_a_cpu_run_under_a_time_budget(tmp_path):
    from evolve.store import ScoreKey

    result = {"status": "ok", "metrics": {"val_bpb": 1.0}, "depth": 2, "budget": 30.0, "budget_unit": "seconds",
              "gpu_name": "cpu", "cpu_name": "AMD EPYC 9654", "seed": 1, "profile": "tiny"}  # fmt: skip
    e = Evaluation.from_result("x", result, purpose="search")
    assert e.key == ScoreKey(2, 30.0, "seconds", "AMD EPYC 9654")
    other = Evaluation.from_result("x", {**result, "cpu_name": "Intel Xeon"}, purpose="search")
    assert not e.key.admits(other.key)
    unknown = Evaluation.from_result("x", {**result, "cpu_name": ""}, purpose="search")  # recorded before
    assert e.key.admits(unknown.key) and unknown.key.admits(e.key)
    tokens = Evaluation.from_result("x", {**result, "budget_unit": "tokens"}, purpose="search")
    assert tokens.key.device == "" and not e.key.admits(tokens.key)
    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")
    store.add_individual(id="x", run="r", commit="c")
    store.record_evaluation(e)
    assert store.evaluations("x")[0].cpu_name == "AMD EPYC 9654"
