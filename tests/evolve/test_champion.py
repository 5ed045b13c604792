"""Transfer verdicts, Spearman and the champion on hand-made stores; `evolve export champion` uses them."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import analysis
from evolve import confirmation as confirm
from evolve.champion import (
    Candidate,
    Verdict,
    choose_champion,
    lineage_scores,
    pick_champion,
    resolve_champion,
    save_verdicts,
    spearman,
    stored_verdicts,
    transfer_report,
    verdict,
)
from evolve.cli import main
from evolve.errors import EvolveError
from evolve.judging import Evidence
from evolve.promotion import pooled_std
from evolve.store import Evaluation, Purpose, Store
from genome import commit_hyperparams, init_workspace
from genome.repo import git_process

SEARCH, DEEP = 2, 4


@pytest.mark.parametrize(
    ("gain", "floor", "expected"),
    [
        (None, 0.01, Verdict.DOES_NOT_TRANSFER),  # no ok run at that depth
        (-0.1, 0.01, Verdict.DOES_NOT_TRANSFER),
        (0.0, 0.01, Verdict.DOES_NOT_TRANSFER),
        (0.015, 0.01, Verdict.INCONCLUSIVE),
        (0.02, 0.01, Verdict.INCONCLUSIVE),  # exactly 2 floors is not above 2 floors
        (0.021, 0.01, Verdict.TRANSFERS),
        (0.5, None, Verdict.INCONCLUSIVE),  # no floor measured at that depth yet
    ],
)
def test_the_verdict_rule(gain, floor, expected):
    assert verdict(gain, floor) is expected


def test_spearman_is_the_rank_correlation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8
    assert spearman([0.91, 0.95, 0.99], [2.0, 1.0, 5.0]) == pytest.approx(0.5)  # ranks only, not values
    assert spearman([1.0], [2.0]) is None and spearman([1, 2], [3, 3]) is None


def _ev(ind, depth, seed, bpb, purpose, status="ok"):
    return Evaluation(individual=ind, depth=depth, budget=5.0 if depth == DEEP else 3.0, seed=seed,
                      profile="tiny", status=status, purpose=purpose, val_bpb=bpb if status == "ok" else None,
                      data_fingerprint="fp")  # fmt: skip


def _populate(store: Store, ids: dict[str, str], search: dict, deep: dict, accept=()) -> None:
    """Individuals (baseline first) with their search- and validation-depth runs."""
    store.add_run("t", strategy="population", profile="tiny", settings={"depth": SEARCH, "budget": 3.0})
    base = next(iter(ids))
    for ind, commit in ids.items():
        parents = () if ind == base else (base,)
        store.add_individual(id=ind, run="t", commit=commit, parents=parents,
                             operator="baseline" if ind == base else "optuna_tweak", description=f"{ind} change")  # fmt: skip
    for ind, values in search.items():
        for k, v in enumerate(values):
            store.record_evaluation(
                _ev(ind, SEARCH, 42 + k, v, Purpose.BASELINE if ind == base else Purpose.SEARCH)
            )
        if ind == base or ind in accept:
            store.set_decision(ind, "accept")
    for ind, values in deep.items():
        for k, v in enumerate(values):
            status = "ok" if v is not None else "oom"
            store.record_evaluation(_ev(ind, DEEP, 42 + k, v, Purpose.VALIDATION, status))


# g0003 is the best at the search depth and does not transfer; g0001 transfers; g0002 helps a bit;
# g0004 runs out of memory at depth 4.
SEARCH_SCORES = {
    "g0000": [1.000, 1.004],
    "g0001": [0.960, 0.962],
    "g0002": [0.980],
    "g0003": [0.940, 0.944],
    "g0004": [0.970],
}
DEEP_SCORES = {
    "g0000": [0.900, 0.904, 0.902],
    "g0001": [0.850, 0.853],
    "g0002": [0.899, 0.900],
    "g0003": [0.910, 0.912],
    "g0004": [None, None],
}


def test_report_verdicts_floors_and_spearman_agree_with_analysis(tmp_path):
    db = tmp_path / "ws" / ".evolve" / "evolve.db"
    with Store(db) as store:
        _populate(store, {i: f"{i}sha" for i in SEARCH_SCORES}, SEARCH_SCORES, DEEP_SCORES,
                  accept=("g0001", "g0002", "g0003", "g0004"))  # fmt: skip
        report = transfer_report(store, "t", SEARCH, DEEP)
    assert report.baseline == "g0000" and report.budget == 5.0
    got = {r.individual: r.verdict for r in report.rows}
    assert got == {
        "g0001": Verdict.TRANSFERS,  # 0.0505 better, floor ~0.0017
        "g0002": Verdict.INCONCLUSIVE,  # 0.0025 better: under 2 floors
        "g0003": Verdict.DOES_NOT_TRANSFER,  # worse than the baseline at depth 4
        "g0004": Verdict.DOES_NOT_TRANSFER,  # no ok run at depth 4
    }
    assert "no ok run at depth 4 (2 failed)" in report.row("g0004").reason
    # floors: pooled over every individual with two or more ok runs at that depth
    assert report.validation_floor == pytest.approx(pooled_std([v for v in DEEP_SCORES.values() if v[0]]))
    assert report.search_floor == pytest.approx(pooled_std([v for v in SEARCH_SCORES.values() if len(v) > 1]))
    assert report.row("g0001").validation_delta == pytest.approx(0.8515 - 0.902)
    assert report.row("g0003").search_delta == pytest.approx(0.942 - 1.002)
    # best at depth 4 first; Spearman over the three with both scores: search order 3,1,2 vs deep 1,2,3
    assert [r.individual for r in report.rows] == ["g0001", "g0002", "g0003", "g0004"]
    assert report.spearman == pytest.approx(spearman([0.961, 0.98, 0.942], [0.8515, 0.8995, 0.911]))
    assert report.spearman == pytest.approx(-0.5)
    data = report.to_json()
    assert data["rows"][0]["validation_gain_floors"] > 2 and data["noise_floor"]["validation"] > 0

    # analysis computes the same verdicts by itself (it has none for a run that never succeeded) ...
    df = analysis.lineage(db).set_index("id")
    assert df.loc["g0001", "verdict"] == "transfers" and df.loc["g0002", "verdict"] == "inconclusive"
    assert df.loc["g0003", "verdict"] == "does not transfer" and df.loc["g0004", "verdict"] is None
    # ... and reads the kept ones once they are saved
    with Store(db) as store:
        save_verdicts(store, report)
        kept = stored_verdicts(store, "t")
    assert {v.individual: v.verdict for v in kept} == got
    df = analysis.lineage(db).set_index("id")
    assert df.loc["g0004", "verdict"] == "does not transfer"
    assert analysis.champion(df.reset_index())["id"] == "g0001"


def test_champion_is_the_best_that_transfers_else_the_best_at_search_depth_unvalidated(tmp_path):
    with Store(tmp_path / "a.db") as store:
        _populate(store, {i: i for i in SEARCH_SCORES}, SEARCH_SCORES, DEEP_SCORES,
                  accept=("g0001", "g0002", "g0003"))  # fmt: skip
        assert choose_champion(store, "t", SEARCH).id == "g0003"  # nothing kept yet: best at depth 2
        assert "run `evolve validate`" in choose_champion(store, "t", SEARCH).reason
        save_verdicts(store, transfer_report(store, "t", SEARCH, DEEP))
        champ = choose_champion(store, "t", SEARCH)
    assert champ.id == "g0001" and champ.validated and champ.validation_depth == DEEP
    assert champ.validation_mean == pytest.approx(0.8515) and "transfers to depth 4" in champ.label()

    # nothing transfers: the best accepted individual at the search depth, marked unvalidated
    deep = {"g0000": [0.900, 0.904], "g0001": [0.930, 0.931], "g0003": [0.905, 0.9055]}
    with Store(tmp_path / "b.db") as store:
        _populate(store, {i: i for i in SEARCH_SCORES}, SEARCH_SCORES, deep, accept=("g0001",))
        report = transfer_report(store, "t", SEARCH, DEEP)
        assert {r.verdict for r in report.rows} == {Verdict.DOES_NOT_TRANSFER}
        save_verdicts(store, report)
        champ = choose_champion(store, "t", SEARCH)
        # g0003 is better at depth 2 but was never accepted by the search: g0001 is the best elite
        assert champ.id == "g0001" and not champ.validated and champ.validation_depth == DEEP
        assert champ.reason.startswith("best at depth 2; does not transfer at depth 4")
        assert "not confirmed on fresh seeds yet" in champ.reason and "unvalidated" in champ.label()
        # an elite not validated yet goes before one shown not to transfer
        store.set_decision("g0002", "accept")
        champ = choose_champion(store, "t", SEARCH)
    assert champ.id == "g0002" and not champ.validated and champ.validation_depth is None
    assert "none validated there transfers" in champ.reason

    with Store(tmp_path / "c.db") as store:  # only the baseline has scores
        _populate(store, {"g0000": "x", "g0001": "y"}, {"g0000": [1.0]}, {})
        assert choose_champion(store, "t", SEARCH).id == "g0000"
        assert transfer_report(store, "t", SEARCH, DEEP) is None
        assert stored_verdicts(store, "t") == []
        store.add_run("empty", strategy="population", profile="tiny")
        assert choose_champion(store, "empty", SEARCH) is None


def _family(tmp_path):
    ws = init_workspace(tmp_path / "ws", run="t", profile="tiny", budget=3.0, depth=SEARCH)
    repo = ws.repo()
    base = repo.baseline()
    kids = [
        commit_hyperparams(repo, base, {"WARMDOWN_FRAC": w}, description=f"warmdown {w}")
        for w in (0.1, 0.2, 0.3, 0.4)
    ]
    return ws, repo, {"g0000": base.commit, **{k.id: k.commit for k in kids}}


def test_export_champion_takes_the_transferring_one_and_says_so(tmp_path):
    ws, repo, ids = _family(tmp_path)
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    plain = runner.invoke(main, ["export", "g0002", "--branch", "try", *w])  # no store yet: no scores
    assert plain.exit_code == 0, plain.output
    assert lineage_scores(ws.root, list(ids)) == {}
    with pytest.raises(EvolveError, match="no evolution in"):
        resolve_champion(ws.root)
    none_yet = runner.invoke(main, ["export", "champion", "--branch", "x", *w])
    assert none_yet.exit_code == 1 and none_yet.output.startswith("error: no evolution in")

    with Store(ws.state_dir / "evolve.db") as store:
        _populate(store, ids, SEARCH_SCORES, DEEP_SCORES, accept=("g0001", "g0002", "g0003"))
        save_verdicts(store, transfer_report(store, "t", SEARCH, DEEP))
    assert resolve_champion(ws.root) == "g0001"
    scores = lineage_scores(ws.root, list(ids))
    assert scores["g0002"] == "val_bpb 0.980000 at depth 2, 0.899500 at depth 4 (inconclusive)"
    assert scores["g0001"].endswith("(transfers); champion") and scores["g0000"] == pytest.approx(1.002)
    result = runner.invoke(main, ["export", "champion", "--branch", "next", *w])
    assert result.exit_code == 0, result.output
    shown = git_process(ws.root, "show", "next:train.py").stdout
    assert shown == git_process(ws.root, "show", f"{ids['g0001']}:train.py").stdout
    message = git_process(ws.root, "log", "-1", "--format=%B", "next").stdout.decode()
    assert "- g0001 optuna" in message and "at depth 4 (transfers); champion]" in message


def test_export_champion_without_a_transferring_one_marks_it_unvalidated(tmp_path):
    ws, repo, ids = _family(tmp_path)
    with Store(ws.state_dir / "evolve.db") as store:
        _populate(store, ids, SEARCH_SCORES, {"g0000": [0.9, 0.901], "g0003": [0.95, 0.951]},
                  accept=("g0001", "g0003"))  # fmt: skip
        save_verdicts(store, transfer_report(store, "t", SEARCH, DEEP))
    result = CliRunner().invoke(main, ["export", "champion", "--branch", "next", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    message = git_process(ws.root, "log", "-1", "--format=%B", "next").stdout.decode()
    assert message.startswith("train.py from t/g0001")  # g0003 is better at depth 2 but does not transfer
    assert "g0001 optuna" in message and "champion, unvalidated]" in message
    assert not math.isnan(float(lineage_scores(ws.root, ["g0000"])["g0000"]))


def test_a_champions_reported_score_is_the_mean_over_fresh_seeds_it_was_never_chosen_on(tmp_path):
    ws, repo, ids = _family(tmp_path)
    search = {
        "g0000": [1.000, 1.004, 0.998],
        "g0001": [0.950, 0.951],
        "g0002": [0.955, 0.957],
        "g0003": [0.99],
    }
    with Store(ws.state_dir / "evolve.db") as store:
        _populate(store, ids, search, {}, accept=("g0001", "g0002"))
        before = choose_champion(store, "t", SEARCH)
        assert before.id == "g0001" and not before.confirmed and "not confirmed" in before.reason
        # g0001 is scored again on seeds 44 and 45; they flatter it less than the seeds that chose it
        c = confirm.start(store, "t", "g0001", SEARCH, first_seed=44, seeds=2)
        for seed, bpb in ((44, 0.962), (45, 0.966)):
            store.record_evaluation(_ev("g0001", SEARCH, seed, bpb, Purpose.REEVAL))
        ev = Evidence(store, "t", SEARCH)
        done = confirm.settle(store, c, ev.values("g0001"), {})
        assert done.status == "confirmed" and done.mean == pytest.approx(0.964) and done.n == 2
        champ = choose_champion(store, "t", SEARCH)
    # its reported score is the fresh-seed mean, not the mean of all four seeds (0.95725)
    assert champ.id == "g0001" and champ.confirmed and champ.search_mean == pytest.approx(0.964)
    assert "2 fresh seeds (44-45)" in champ.reason
    text = lineage_scores(ws.root, ["g0001"])["g0001"]
    assert text.startswith("val_bpb 0.964000 at depth 2 on fresh seeds 44-45") and text.endswith(
        "champion, unvalidated"
    )
    # analysis reports the same champion with the same score (one rule, evolve's)
    df = analysis.lineage(ws.root)
    row = analysis.champion(df)
    assert row["id"] == "g0001" and row["confirmed_bpb_mean"] == pytest.approx(0.964)
    assert row["confirmation"] == "confirmed" and row["confirmed_seeds"] == "44-45"


def test_a_failed_confirmation_is_no_champion_and_a_confirmed_elite_beats_an_unconfirmed_one():
    cands = [
        Candidate("g0", True, True, 1.0, 1.01),
        Candidate("a", False, True, 0.94, 0.95, confirmation="failed", fresh_mean=0.93, fresh_n=1),
        Candidate(
            "b",
            False,
            True,
            0.95,
            0.96,
            confirmation="confirmed",
            fresh_mean=0.97,
            fresh_n=3,
            fresh_seeds="44-46",
        ),
        Candidate("c", False, True, 0.93, 0.94),  # the best bound, not confirmed yet
    ]
    champ = pick_champion(cands, 2)
    assert champ.id == "b" and champ.search_mean == 0.97 and champ.confirmed
    assert pick_champion([cands[0], cands[1], cands[3]], 2).id == "c"  # before b: the best unconfirmed
    assert pick_champion([cands[0], cands[1]], 2).id == "g0"  # a failed its fresh seeds


def test_an_elite_whose_fresh_seeds_do_not_beat_the_baseline_is_not_the_champion():
    base = Candidate("g0", True, True, 1.00, 1.01)
    lucky = Candidate("a", False, True, 0.95, 0.96, confirmation="confirmed", fresh_mean=1.002, fresh_n=3)
    other = Candidate("b", False, True, 0.97, 0.99)
    champ = pick_champion([base, lucky, other], 2)
    assert champ.id == "b" and not champ.confirmed  # a was the winner's curse: b is next, unconfirmed
    assert pick_champion([base, lucky], 2).id == "g0"
