"""A run's rows read incrementally (evolve.snapshots) and the evidence built from them: every change
is seen, whoever writes it, a rolled-back change leaves nothing, and the incremental evidence is
the evidence read from scratch."""

from __future__ import annotations

import random
import sqlite3

import pytest
from test_store import child, ev

from evolve.judging import Evidence
from evolve.migrations import MIGRATIONS
from evolve.promotion import PromotionPolicy
from evolve.store import Status, Store


@pytest.fixture
def db(tmp_path):
    return tmp_path / ".evolve" / "evolve.db"


@pytest.fixture
def store(db):
    s = Store(db)
    s.add_run("r1", strategy="population", profile="tiny")
    s.add_individual(id="base", run="r1", commit="c0", operator="baseline", description="baseline")
    yield s
    s.close()


def scratch(db, run="r1"):
    """What a store that has read nothing before says."""
    with Store(db, readonly=True) as fresh:
        return fresh.individuals(run), fresh.evaluations(run=run)


def test_every_change_is_read_whoever_writes_it(store, db):
    child(store, "a")
    assert [i.id for i in store.individuals("r1")] == ["base", "a"]
    store.record_evaluation(ev("a", 0, 1.0))
    other = Store(db)  # another process's writer
    other.set_decision("a", "accept")
    child(other, "b", parents=("a",))
    other.record_evaluation(ev("b", 0, 0.9))
    other.close()
    with sqlite3.connect(db) as raw:  # SQL of any module, through no Store at all
        raw.execute("UPDATE individuals SET priority = 7 WHERE id = 'base'")
    inds = {i.id: i for i in store.individuals("r1")}
    assert inds["a"].decision == "accept" and inds["base"].priority == 7 and list(inds) == ["base", "a", "b"]
    assert [e.individual for e in store.evaluations(run="r1")] == ["a", "b"]
    assert (store.individuals("r1"), store.evaluations(run="r1")) == scratch(db)
    revs = [r[0] for r in store._query("SELECT rev FROM individuals ORDER BY rev")]
    assert len(set(revs)) == len(revs) == 3  # every row's last change has its own number


def test_a_rolled_back_change_is_forgotten(store, db):
    with pytest.raises(RuntimeError):
        with store.transaction():
            child(store, "ghost")
            store.set_status("base", Status.QUEUED)
            assert "ghost" in {i.id for i in store.individuals("r1")}  # seen inside the change ...
            raise RuntimeError("killed mid-change")
    assert [(i.id, i.status) for i in store.individuals("r1")] == [(i.id, i.status) for i in scratch(db)[0]]
    assert "ghost" not in {i.id for i in store.individuals("r1")}  # ... and gone with it


def test_a_list_handed_out_keeps_its_view(store):
    before = store.individuals("r1")
    held = Evidence(store, "r1", 4)
    child(store, "a")
    store.record_evaluation(ev("a", 0, 1.0))
    store.set_decision("base", "accept")
    assert [i.id for i in before] == ["base"] and before[0].decision is None
    assert list(held.individuals) == ["base"] and held.by_ind == {} and held.accepted() == []
    now = Evidence(store, "r1", 4)
    assert (
        list(now.individuals) == ["base", "a"]
        and now.accepted() == ["base"]
        and now.runs("a")[0].val_bpb == 1.0
    )


def test_an_individual_created_out_of_order_is_listed_in_order(store, db):
    child(store, "late")
    store._conn().execute(
        "UPDATE individuals SET created = 0 WHERE id = 'late'"
    )  # e.g. adopted with its date
    assert [i.id for i in store.individuals("r1")] == ["late", "base"] == [i.id for i in scratch(db)[0]]


def test_a_store_without_the_change_counter_reads_everything(db):
    old = Store(db, migrations=tuple(m for m in MIGRATIONS if m.version < 23))
    old.add_run("r1", strategy="population", profile="tiny")
    old.add_individual(id="base", run="r1", commit="c0", operator="baseline", description="baseline")
    old.close()
    reader = Store(db, readonly=True)  # read-only: nothing migrates
    assert not reader.snapshots.has_rev and [i.id for i in reader.individuals("r1")] == ["base"]
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE individuals SET decision = 'accept'")
    assert reader.individuals("r1")[0].decision == "accept"
    reader.close()
    upgraded = Store(db)
    assert upgraded.snapshots.has_rev and upgraded.individuals("r1")[0].decision == "accept"
    upgraded.close()


def test_the_incremental_evidence_is_the_evidence_read_from_scratch(store, db):
    """A random run of children, runs, decisions and failures: after each step the evidence the
    long-lived store builds (folded forward, models shared) equals a fresh store's."""
    rng = random.Random(5)
    policy = PromotionPolicy()
    ids = ["base"]
    for step in range(120):
        what = rng.random()
        if what < 0.3:
            cid = f"c{step}"
            child(store, cid, parents=(rng.choice(ids),))
            ids.append(cid)
        elif what < 0.8:
            ind = rng.choice(ids)
            status = "ok" if rng.random() < 0.85 else "crashed"
            bpb = 1.0 + rng.gauss(0, 0.01) if status == "ok" else None
            store.record_evaluation(ev(ind, rng.randrange(4), bpb, status=status))
        else:
            store.set_decision(rng.choice(ids), rng.choice(["accept", "reject"]))
        if step % 10 == 9:
            mine = Evidence(store, "r1", 4)
            with Store(db, readonly=True) as fresh:
                theirs = Evidence(fresh, "r1", 4)
                assert mine.individuals == theirs.individuals and mine.by_ind == theirs.by_ind
                assert mine.main_key() == theirs.main_key() and mine.model() == theirs.model()
                assert mine.ranked(policy) == theirs.ranked(policy)
                for i in ids:
                    assert mine.model_for(i) == theirs.model_for(i)
                    assert mine.judge(i, policy) == theirs.judge(i, policy)
    assert len(Evidence(store, "r1", 4).accepted()) > 3  # the test saw replicates, not only empty models
