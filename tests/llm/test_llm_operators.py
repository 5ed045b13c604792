"""llm_mutation and llm_crossover on a real workspace against the loopback server, faults included."""

from __future__ import annotations

import pytest
from loopback import SECRET, Reply, answer

from evolve.llm.client import BudgetExhausted
from evolve.llm.operators import LLMCrossover, LLMMutation
from evolve.operators.base import OperatorError, Outcome
from evolve.promotion import Score
from evolve.store import LineageKind
from genome.repo import run_git

WARMDOWN = "WARMDOWN_FRAC = 0.5"
MATRIX = "MATRIX_LR = 0.04  # Muon, every 2-D matrix inside the blocks"
GOOD = answer(
    "warm-down over 60% of the budget", WARMDOWN, "WARMDOWN_FRAC = 0.6", "A longer warm-down helps."
)


def branches(run) -> list[str]:
    return [g.id for g in run.repo.genomes()]


def calls(run) -> list[tuple]:
    rows = run.store._query(
        "SELECT model, operator, ok, prompt_tokens, completion_tokens, cost, error FROM llm_calls"
    )
    return [tuple(r) for r in rows]


@pytest.fixture
def mutation(run):
    op = LLMMutation(run.setup())
    yield op
    op.close()


def test_a_good_mutation_is_committed_with_its_description_and_cost(run, llm_server, mutation):
    llm_server.push(Reply(text=GOOD, usage=(3000, 200)))
    proposal = mutation.propose(run.context("g0000"))
    child = proposal.genome
    assert child.parents == ("g0000",) and child.operator == "llm_mutation"
    assert child.description == "warm-down over 60% of the budget"
    assert "WARMDOWN_FRAC = 0.6" in run.repo.read(child)
    assert "A longer warm-down helps." in run_git(run.repo.root, "log", "-1", "--format=%B", child.commit)
    assert proposal.kind is LineageKind.MUTATION and proposal.notes["model"] == "m1"
    assert calls(run) == [("m1", "llm_mutation", 1, 3000, 200, pytest.approx(0.0034), "")]
    # The prompt carried program.md and the parent's whole train.py.
    system, user = llm_server.bodies()[0]["messages"]
    assert "## Not fair game" in system["content"] and "def log(msg: str)" in user["content"]


def test_a_malformed_answer_is_repaired_in_the_same_conversation(run, llm_server, mutation):
    llm_server.push(Reply(text="I would lengthen the warm-down."), Reply(text=GOOD))
    child = mutation.propose(run.context("g0000")).genome
    assert child.description == "warm-down over 60% of the budget"
    retry = llm_server.bodies()[1]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "I would lengthen the warm-down."
    assert "no SEARCH/REPLACE blocks found" in retry[3]["content"]
    assert [c[2] for c in calls(run)] == [1, 1]
    # Each call says what it was for and what became of its answer.
    first, second = run.store.llm_calls("t")
    assert (first.purpose, first.outcome) == ("mutation", "repaired") and "no SEARCH/REPLACE" in first.why
    assert (second.purpose, second.outcome, second.why) == ("repair", "usable", "")
    assert run.store.llm_text(second.id)[1] == GOOD and run.store.llm_text(first.id)[0][1]["role"] == "user"


@pytest.mark.parametrize(
    "bad",
    [
        Reply(text=""),  # empty
        Reply(text=GOOD[: GOOD.index("=======")], finish="length"),  # cut off at max_tokens
        Reply(text=answer("x", "WARMDOWN_FRAC = 0.50  # nope", "WARMDOWN_FRAC = 0.6")),  # does not apply
    ],
    ids=["empty", "truncated", "non-applying"],
)
def test_unusable_answers_get_one_repair_round(run, llm_server, mutation, bad):
    llm_server.push(bad, Reply(text=GOOD))
    child = mutation.propose(run.context("g0000")).genome
    assert "WARMDOWN_FRAC = 0.6" in run.repo.read(child)
    assert len(llm_server.requests) == 2


def test_non_applying_twice_is_a_failed_proposal_that_quotes_the_closest_lines(run, llm_server, mutation):
    wrong = Reply(text=answer("x", "WARMDOWN_FRAC = 0.55", "WARMDOWN_FRAC = 0.6"))
    llm_server.push(wrong, wrong)
    with pytest.raises(OperatorError, match="no usable answer after a repair round"):
        mutation.propose(run.context("g0000"))
    repair = llm_server.bodies()[1]["messages"][-1]["content"]
    assert "SEARCH matches nowhere" in repair and f"53 | {WARMDOWN}" in repair
    assert branches(run) == ["g0000"]  # nothing committed
    assert len(calls(run)) == 2
    outcomes = [(c.purpose, c.outcome) for c in run.store.llm_calls("t")]
    assert outcomes == [("mutation", "unusable"), ("repair", "unusable")]
    assert all("SEARCH matches nowhere" in c.why for c in run.store.llm_calls("t"))
    assert run.store.llm_spend("t")["unusable"] == 2


def test_an_answer_that_remakes_code_already_tried_is_sent_back_for_repair(run, llm_server, mutation):
    llm_server.push(Reply(text=GOOD))
    first = mutation.propose(run.context("g0000")).genome
    run.add(first, val_bpb=1.29)
    again = answer("longer warm-down, once more", WARMDOWN, "WARMDOWN_FRAC = 0.6  # the same value")
    llm_server.push(Reply(text=again), Reply(text=answer("lr", MATRIX, "MATRIX_LR = 0.05")))
    child = mutation.propose(run.context("g0000")).genome
    repair = llm_server.bodies()[-1]["messages"][-1]["content"]
    assert f"the same code as {first.id}" in repair and "already tried" in repair
    assert "MATRIX_LR = 0.05" in run.repo.read(child) and branches(run) == ["g0000", first.id, child.id]


def test_a_failing_endpoint_is_a_failed_proposal_with_every_attempt_recorded(run, llm_server, mutation):
    llm_server.push(Reply(status=500), Reply(reset=True), Reply(status=502), Reply(status=503))
    with pytest.raises(OperatorError):
        mutation.propose(run.context("g0000"))
    assert [c[2] for c in calls(run)] == [0] * 7
    assert branches(run) == ["g0000"]


def test_the_usd_cap_stops_llm_proposals(run, llm_server):
    run.store.add_llm_call(model="m1", ok=True, cost=5.0, run="t")  # spent before a resume
    run.ws.settings.llm["max_usd"] = 5.0
    op = LLMMutation(run.setup())
    try:
        assert op.exhausted
        with pytest.raises(BudgetExhausted, match="--max-llm-usd"):
            op.propose(run.context("g0000"))
        assert llm_server.requests == []
    finally:
        op.close()


def test_outcomes_credit_the_model_that_wrote_the_child(run, llm_server, mutation):
    llm_server.push(Reply(text=GOOD))
    child = mutation.propose(run.context("g0000")).genome
    row = run.add(child, val_bpb=1.25)
    mutation.on_outcome(Outcome(row, row.parents, Score.of([1.25]), accepted=True))
    mutation.on_outcome(Outcome(row, row.parents, Score.of([1.25]), accepted=True))  # told again on resume
    assert mutation.session.bandit.stats() == {"m1": (1, 1)}
    llm_server.push(Reply(text=answer("lr", MATRIX, "MATRIX_LR = 0.05")))
    twin = run.add(mutation.propose(run.context("g0000")).genome, status="rejected")
    # A rejected duplicate is told its twin's score: no credit.
    mutation.on_outcome(Outcome(twin, twin.parents, Score.of([1.25]), accepted=False))
    assert mutation.session.bandit.stats() == {"m1": (2, 1)}
    assert (run.ws.state_dir / "llm_models.json").exists()


def _two_children(run, mutation, llm_server, first: str, second: str):
    llm_server.push(Reply(text=first), Reply(text=second))
    a = mutation.propose(run.context("g0000")).genome
    b = mutation.propose(run.context("g0000")).genome
    run.add(a, val_bpb=1.27)
    run.add(b, val_bpb=1.28)
    return a, b


def git_parents(run, commit: str) -> list[str]:
    return run_git(run.repo.root, "rev-list", "--parents", "-n", "1", commit).split()[1:]


def test_a_conflicting_crossover_is_resolved_and_committed_as_a_merge(run, llm_server, mutation):
    a, b = _two_children(
        run, mutation, llm_server,
        answer("warm-down 0.6", WARMDOWN, "WARMDOWN_FRAC = 0.6"),
        answer("warm-down 0.7", WARMDOWN, "WARMDOWN_FRAC = 0.7"),
    )  # fmt: skip
    op = LLMCrossover(run.setup())
    try:
        llm_server.push(
            Reply(text=answer("warm-down 0.65, between both", "WARMDOWN_FRAC = 0.6", "WARMDOWN_FRAC = 0.65"))
        )
        proposal = op.propose(run.context(a.id, b.id, operator="llm_crossover"))
    finally:
        op.close()
    child = proposal.genome
    assert proposal.kind is LineageKind.CROSSOVER and proposal.notes["conflicts"] == 1
    assert child.parents == (a.id, b.id) and git_parents(run, child.commit) == [a.commit, b.commit]
    assert "WARMDOWN_FRAC = 0.65" in run.repo.read(child) and "<<<<<<<" not in run.repo.read(child)
    prompt = llm_server.bodies()[-1]["messages"][1]["content"]
    assert "Conflict 1" in prompt and "WARMDOWN_FRAC = 0.7" in prompt and "WARMDOWN_FRAC = 0.6" in prompt
    # Both lineages, why they were paired, the setting and the rule.
    assert f"Lineage of {a.id} (newest first)" in prompt and f"Lineage of {b.id} (newest first)" in prompt
    assert "Since their common ancestor g0000 (overlapping changes)" in prompt
    assert f"{a.id} changed WARMDOWN_FRAC 0.5 -> 0.6" in prompt and "trains at depth 2" in prompt
    assert "How a child is judged" in prompt
    # The description says what it took: the conflict was resolved to a new value.
    assert (
        child.description
        == "warm-down 0.65, between both (from g0001: nothing; from g0002: nothing; new: WARMDOWN_FRAC=0.65)"
    )


def test_a_crossover_never_pairs_a_parent_with_its_ancestor(run, llm_server, mutation):
    llm_server.push(Reply(text=GOOD))
    a = mutation.propose(run.context("g0000")).genome
    run.add(a, val_bpb=1.27)
    op = LLMCrossover(run.setup())
    try:
        with pytest.raises(OperatorError, match="ancestor or descendant"):
            op.propose(run.context(a.id, "g0000", operator="llm_crossover"))
        assert llm_server.requests[1:] == []  # no call spent on it
        llm_server.push(Reply(text=answer("matrix lr 0.05", MATRIX, "MATRIX_LR = 0.05")))
        b = mutation.propose(run.context("g0000")).genome
        run.add(b, val_bpb=1.28)
        # The drawn pair is related, but an unrelated elite is there: it becomes the partner.
        llm_server.push(Reply(text="DESCRIPTION: both\nRATIONALE: independent.\n\nNO CHANGES"))
        child = op.propose(
            run.context(a.id, "g0000", elites=("g0000", b.id), operator="llm_crossover")
        ).genome
        assert child.parents == (a.id, b.id)
    finally:
        op.close()


def test_a_clean_crossover_may_keep_the_merge_and_must_not_copy_a_parent(run, llm_server, mutation):
    a, b = _two_children(
        run, mutation, llm_server,
        answer("warm-down 0.6", WARMDOWN, "WARMDOWN_FRAC = 0.6"),
        answer("matrix lr 0.05", MATRIX, "MATRIX_LR = 0.05"),
    )  # fmt: skip
    op = LLMCrossover(run.setup())
    try:
        llm_server.push(Reply(text="DESCRIPTION: both changes\nRATIONALE: independent.\n\nNO CHANGES"))
        child = op.propose(run.context(a.id, b.id, operator="llm_crossover")).genome
        text = run.repo.read(child)
        assert "WARMDOWN_FRAC = 0.6" in text and "MATRIX_LR = 0.05" in text
        # The description says what the child took from each parent.
        assert (
            child.description == f"both changes (from {a.id}: WARMDOWN_FRAC=0.6; from {b.id}: MATRIX_LR=0.05)"
        )
        assert len(git_parents(run, child.commit)) == 2
        # An answer that undoes one side yields a copy of a parent: repaired, then refused.
        undo = Reply(text=answer("undo", "MATRIX_LR = 0.05", MATRIX))
        llm_server.push(undo, undo)
        with pytest.raises(OperatorError):
            op.propose(run.context(a.id, b.id, operator="llm_crossover"))
        assert "identical to parent" in llm_server.bodies()[-1]["messages"][-1]["content"]
    finally:
        op.close()


def test_the_key_is_in_no_store_row_or_log(run, llm_server, mutation, caplog):
    llm_server.push(Reply(status=401, body=f"bad key {SECRET}"))
    with pytest.raises(OperatorError):
        mutation.propose(run.context("g0000"))
    dump = "\n".join(run.store._conn().iterdump())
    assert "401" in dump and SECRET not in dump and SECRET not in caplog.text
