"""The pandas views: lineage and evaluations columns and values, queries, read-only use, the git fallback."""

from __future__ import annotations

import hashlib
import math
import shutil
import sqlite3
import time

import pandas as pd
import pytest

import analysis
from analysis import AnalysisError
from analysis.frames import LINEAGE_COLUMNS
from evolve.store import Store


def _row(df: pd.DataFrame, ind: str) -> pd.Series:
    return df.set_index("id").loc[ind]


def test_lineage_has_one_flat_row_per_individual_with_scores_and_deltas(built):
    ids = built.ids
    df = analysis.lineage(built.root)
    assert list(df.columns) == list(LINEAGE_COLUMNS)
    assert list(df["id"]) == [ids[k] for k in ("base", "lr", "cap", "warm", "merge", "crash", "bad")]
    warm, merge, base = _row(df, ids["warm"]), _row(df, ids["merge"]), _row(df, ids["base"])
    assert warm.val_bpb_mean == pytest.approx(0.95) and warm.val_bpb_n == 3
    assert warm.val_bpb_std == pytest.approx(0.01)
    assert warm.delta_parent == pytest.approx(0.95 - 0.98)
    assert warm.delta_baseline == pytest.approx(-0.05)
    assert warm.depth == 2 and warm.generation == 2 and warm.decision == "accept"
    # A merge crossover: both parents in merge order, compared with the better one.
    assert merge.parents == (ids["warm"], ids["cap"]) and merge.parent == ids["warm"]
    assert merge.kind == "merge" and merge.operator == "merge_crossover" and merge.generation == 3
    assert merge.delta_parent == pytest.approx(0.96 - 0.95)
    assert base.delta_baseline == 0 and math.isnan(base.delta_parent) and base.parents == ()
    # Failures are rows with their status, never missing.
    crash, bad = _row(df, ids["crash"]), _row(df, ids["bad"])
    assert crash.status == "failed" and crash.failures == 1 and math.isnan(crash.val_bpb_mean)
    assert bad.status == "rejected" and bad.evaluations == 0 and "identical" in bad.guard_reason
    # Device seconds: a run on two devices counts twice; validation runs count too.
    assert warm.gpu_seconds == pytest.approx(3 * 6.0 * 2 + 20.0)
    assert isinstance(df["created"].dtype, pd.DatetimeTZDtype) and df["created"].is_monotonic_increasing
    assert df.attrs["noise_floor"]["r1"] == pytest.approx(0.01)


def test_validation_columns_and_verdicts(built):
    ids = built.ids
    df = analysis.lineage(built.root).set_index("id")
    assert df.loc[ids["warm"], "validation_depth"] == 4
    assert df.loc[ids["base"], "validation_bpb_mean"] == pytest.approx(0.9025)
    # gain 0.0325 over the baseline at depth 4, floor std(0.900, 0.905) = 0.0035: transfers
    assert df.loc[ids["warm"], "validation_delta_baseline"] == pytest.approx(0.870 - 0.9025)
    assert df.loc[ids["warm"], "verdict"] == "transfers"
    assert df.loc[ids["merge"], "verdict"] == "inconclusive"  # gain 0.0045 < 2 floors
    assert df.loc[ids["lr"], "verdict"] == "does not transfer"  # worse than the baseline at depth 4
    assert pd.isna(df.loc[ids["cap"], "verdict"]) and math.isnan(df.loc[ids["cap"], "validation_bpb_mean"])
    assert analysis.champion(df.reset_index())["id"] == ids["warm"]


def test_validation_columns_stay_empty_without_validation(tmp_path):
    from analysis_support import build_run

    b = build_run(tmp_path / "ws", validate=False)
    df = analysis.lineage(b.root)
    assert df["validation_bpb_mean"].isna().all() and df["verdict"].isna().all()
    assert df["validation_depth"].isna().all()
    assert df.loc[df["val_bpb_mean"].notna(), "delta_baseline"].notna().all()


def test_evaluations_has_one_row_per_training_run_with_provenance_and_metrics(built):
    ev = analysis.evaluations(built.db)
    assert len(ev) == 3 + 1 + 1 + 3 + 1 + 1 + 2 + 3  # baseline x3, children, reevals, crash, validation
    assert set(ev["purpose"]) == {"baseline", "search", "reeval", "validation"}
    crash = ev[ev["individual"] == built.ids["crash"]].iloc[0]
    assert crash.status == "crash" and pd.isna(crash.val_bpb) and "boom" in crash.error_tail
    assert {
        "run",
        "operator",
        "island",
        "seed",
        "depth",
        "profile",
        "data_fingerprint",
        "metrics_num_steps",
    } <= set(ev)
    warm = ev[ev["individual"] == built.ids["warm"]]
    assert list(warm["metrics_num_steps"]) == [10, 11, 12, 10]
    assert list(warm["purpose"]) == ["search", "reeval", "reeval", "validation"]


def test_ancestry_and_descendants_follow_both_parents_of_a_crossover(built):
    ids = built.ids
    df = analysis.lineage(built.root)
    anc = analysis.ancestry(df, ids["merge"])
    assert list(anc["id"]) == [ids["base"], ids["lr"], ids["cap"], ids["warm"], ids["merge"]]
    assert ids["merge"] not in set(analysis.ancestry(df, ids["merge"], include_self=False)["id"])
    assert set(analysis.descendants(df, ids["cap"])["id"]) == {ids["merge"], ids["bad"]}
    assert set(analysis.descendants(df, ids["base"])["id"]) == set(df["id"]) - {ids["base"]}
    assert analysis.descendants(df, ids["merge"]).empty
    chain = analysis.first_parent_chain(df, ids["merge"])
    assert list(chain["id"]) == [ids["base"], ids["lr"], ids["warm"], ids["merge"]]
    with pytest.raises(AnalysisError, match="no individual 'g9999'"):
        analysis.ancestry(df, "g9999")


def test_operator_and_island_stats(built):
    df = analysis.lineage(built.root)
    ops = analysis.operator_stats(df).set_index("operator")
    assert "baseline" not in ops.index  # generation 0 is nobody's child
    assert ops.loc["optuna", ["children", "evaluated", "improvements"]].tolist() == [2, 2, 2]
    assert ops.loc["llm_mutation", ["children", "failed", "rejected", "improvements"]].tolist() == [
        3,
        1,
        1,
        0,
    ]
    assert ops.loc["optuna", "improvement_rate"] == 1.0 and ops.index[0] == "optuna"
    assert ops.loc["merge_crossover", "best_delta"] == pytest.approx(0.01)
    isl = analysis.island_stats(df).set_index("island")
    assert isl.loc[0, "best_id"] == built.ids["warm"] and isl.loc[1, "best_id"] == built.ids["merge"]
    assert isl["individuals"].sum() == len(df) and isl.loc[1, "max_generation"] == 3


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_never_writes_and_sees_a_snapshot_beside_a_live_writer(tmp_path):
    from analysis_support import build_run

    b = build_run(tmp_path / "ws")
    wal = b.db.with_name(b.db.name + "-wal")
    before = (_digest(b.db), wal.stat().st_size if wal.exists() else 0)
    writer = Store(b.db)
    conn = writer._conn()
    conn.execute("BEGIN IMMEDIATE")  # a run in the middle of a transaction holds the write lock
    conn.execute(
        "INSERT INTO individuals (id, run, commit_sha, parents, created) VALUES ('g0100', 'r1', 'x', '[]', ?)",
        (time.time(),),
    )
    try:
        start = time.monotonic()
        df = analysis.lineage(b.root)
        assert time.monotonic() - start < 5  # not blocked by the writer
        assert "g0100" not in set(df["id"])  # uncommitted work is invisible
    finally:
        conn.execute("COMMIT")
    assert "g0100" in set(analysis.lineage(b.root)["id"])
    writer.close()
    # A reader alone changes nothing on disk.
    frozen = (_digest(b.db), wal.stat().st_size if wal.exists() else 0)
    analysis.lineage(b.root)
    analysis.evaluations(b.root)
    assert (_digest(b.db), wal.stat().st_size if wal.exists() else 0) == frozen
    assert before != frozen  # (the writer above did change it: the digest can tell)


def test_without_a_store_the_lineage_is_rebuilt_from_git(built, tmp_path):
    with_store = analysis.lineage(built.root)
    clone = tmp_path / "clone"
    shutil.copytree(built.root, clone)
    shutil.rmtree(clone / ".evolve")
    df = analysis.lineage(clone)
    assert df.attrs["source"] == "git"
    cols = ["id", "commit", "parents", "parent", "operator", "description", "generation", "kind"]
    pd.testing.assert_frame_equal(df[cols], with_store[cols], check_dtype=False)
    assert df["val_bpb_mean"].isna().all() and df["status"].isna().all()
    anc = analysis.ancestry(df, built.ids["merge"])
    assert len(anc) == 5


def test_clear_errors_for_what_cannot_be_analysed(tmp_path, built):
    with pytest.raises(AnalysisError, match="does not exist"):
        analysis.lineage(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="not a workspace"):
        analysis.lineage(tmp_path / "empty")
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all " * 100)
    with pytest.raises(AnalysisError, match="not an autoevolve store"):
        analysis.lineage(junk)
    with pytest.raises(AnalysisError, match=r"no run 'nope'.*runs: r1"):
        analysis.lineage(built.root, run="nope")
    sqlite3.connect(tmp_path / "blank.db").close()
    with pytest.raises(AnalysisError, match="not an autoevolve store"):
        analysis.evaluations(tmp_path / "blank.db")


def test_llm_usage_and_stored_verdicts_are_read_when_the_store_has_them(tmp_path):
    """LLM calls that name their individual (migration 4) and stored verdicts (migration 3) are read."""
    from analysis_support import build_run

    b = build_run(tmp_path / "ws")
    ids = b.ids
    conn = sqlite3.connect(b.db)
    with conn:
        rows = [(ids["cap"], 1000, 200, 0.02), (ids["cap"], 500, 100, 0.01), (ids["crash"], 800, 300, 0.03)]
        conn.executemany(
            "INSERT INTO llm_calls (time, model, operator, prompt_tokens, completion_tokens, cost, ok, individual)"
            " VALUES (0, 'm', 'llm_mutation', ?, ?, ?, 1, ?)",
            [(p, c, cost, ind) for ind, p, c, cost in rows],
        )
        conn.execute(  # the table of migration 3 (evolve validate)
            "INSERT INTO transfer_verdicts (run, individual, search_depth, validation_depth, verdict, updated)"
            " SELECT run, id, 2, 4, 'does not transfer', 0 FROM individuals WHERE id = ?",
            (ids["warm"],),
        )
    conn.close()
    df = analysis.lineage(b.root).set_index("id")
    assert df.loc[ids["cap"], ["llm_prompt_tokens", "llm_completion_tokens", "llm_tokens"]].tolist() == [
        1500,
        300,
        1800,
    ]
    assert df.loc[ids["cap"], "llm_cost"] == pytest.approx(0.03)
    assert math.isnan(df.loc[ids["lr"], "llm_cost"])  # no LLM call made it
    assert df.loc[ids["warm"], "verdict"] == "does not transfer"  # the stored verdict wins
    assert df.loc[ids["merge"], "verdict"] == "inconclusive"  # computed where none is stored
    ops = analysis.operator_stats(df.reset_index()).set_index("operator")
    assert ops.loc["llm_mutation", "llm_cost"] == pytest.approx(0.06)
    assert math.isnan(ops.loc["optuna", "llm_cost"])


def test_champion_follows_the_export_rule():
    """Among transferring individuals the best at the validation depth wins, not the best at the
    search depth; without one, the best accepted child not shown to fail deeper (never the baseline)."""
    df = pd.DataFrame({
        "id": ["g0", "a", "b", "c", "d"],
        "parents": [(), ("g0",), ("g0",), ("g0",), ("g0",)],
        "decision": ["accept", "accept", "accept", "accept", "reject"],
        "val_bpb_mean": [1.00, 0.90, 0.92, 0.95, 0.80],
        "val_bpb_n": [3, 3, 3, 3, 1],
        "verdict": [None, "transfers", "transfers", "does not transfer", None],
        "validation_bpb_mean": [1.10, 1.05, 1.01, 1.20, float("nan")],
    })  # fmt: skip
    assert analysis.champion(df)["id"] == "b"  # a is better at the search depth, b deeper
    none_transfer = df.assign(verdict=[None, "does not transfer", "inconclusive", None, None])
    assert analysis.champion(none_transfer)["id"] == "b"  # a failed deeper; d was rejected
    only_base = df[df["id"] == "g0"]
    assert analysis.champion(only_base)["id"] == "g0"
