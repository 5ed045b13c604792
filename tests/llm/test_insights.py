"""Meta-insights: structured, checked against the store (real ids, measured deltas), versioned, replaced."""

from __future__ import annotations

import pytest
from loopback import Reply, answer

from evolve.llm.insights import check, facts
from evolve.llm.operators import LLMMutation

WARMDOWN = "WARMDOWN_FRAC = 0.5"
MATRIX = "MATRIX_LR = 0.04  # Muon, every 2-D matrix inside the blocks"
GOOD = answer("warm-down over 60% of the budget", WARMDOWN, "WARMDOWN_FRAC = 0.6")


@pytest.fixture
def notebook(run, llm_server):
    """An llm_mutation with notes due every 2 children; two children done: a -0.03 win and a crash."""
    run.ws.settings.llm["insights_every"] = 2
    op = LLMMutation(run.setup())
    llm_server.push(Reply(text=GOOD), Reply(text=answer("lr", MATRIX, "MATRIX_LR = 0.05")))
    a = op.propose(run.context("g0000")).genome
    b = op.propose(run.context("g0000")).genome
    run.add(a, val_bpb=1.27)
    run.add(b, error="RuntimeError: boom")
    yield op, a, b
    op.close()


def insight_calls(run):
    return [c for c in run.store.llm_calls("t") if c.purpose == "insights"]


def test_checked_notes_keep_only_bullets_that_cite_real_children_with_their_deltas(run, notebook):
    _, a, b = notebook
    known = facts(run.store, "t", run.depth)
    assert known[a.id].delta == pytest.approx(-0.03) and known[b.id].failed
    answer_text = f"""## What helped
- warm-down 0.6 instead of 0.5 [{a.id} -0.030]
- more heads [g9999 -0.02]
- a longer warm-down, -0.05 [{a.id} -0.05]
## What hurt
- MATRIX_LR 0.05 crashed [{b.id} failed]
- warm-down 0.6 [{a.id} -0.03]
## Open questions
- does the warm-down gain survive at depth 24? [{a.id}]
- try something bold
Overall this looks promising."""
    checked = check(answer_text, known)
    assert [(i["kind"], i["text"]) for i in checked.items] == [
        ("helped", f"warm-down 0.6 instead of 0.5 [{a.id} -0.030]"),
        ("hurt", f"MATRIX_LR 0.05 crashed [{b.id} failed]"),
        ("open", f"does the warm-down gain survive at depth 24? [{a.id}]"),
    ]
    whys = {d["line"]: d["why"] for d in checked.dropped}
    assert "not a finished child" in whys["more heads [g9999 -0.02]"]
    assert "measured -0.030000" in whys[f"a longer warm-down, -0.05 [{a.id} -0.05]"]
    assert "neither got worse nor failed" in whys[f"warm-down 0.6 [{a.id} -0.03]"]
    assert whys["try something bold"] == "cites no individual"
    assert "not a bullet" in whys["Overall this looks promising."]
    assert checked.text().splitlines()[0] == "What helped"


def test_a_useless_insights_answer_is_dropped_recorded_as_failed_and_never_shown(run, llm_server, notebook):
    op, a, _ = notebook
    llm_server.push(Reply(text="I have no idea."), Reply(text=answer("lr 0.03", MATRIX, "MATRIX_LR = 0.03")))
    child = op.propose(run.context(a.id)).genome
    assert run.store.insight_versions("t") == []  # nothing stored
    (call,) = insight_calls(run)
    assert call.ok and call.outcome == "unusable" and "no bullet cites an individual" in call.why
    assert call.individual is None  # the run's call, whatever the engine names later
    mutation_prompt = llm_server.bodies()[-1]["messages"][1]["content"]
    assert "I have no idea." not in mutation_prompt and "What the search has learned" not in mutation_prompt
    # Not retried on the next proposal: it waits for the next 2 children.
    llm_server.push(Reply(text=answer("lr 0.02", MATRIX, "MATRIX_LR = 0.02")))
    op.propose(run.context(a.id))
    assert len(insight_calls(run)) == 1
    assert child.id != a.id


def test_good_notes_are_versioned_shown_and_replaced_not_appended(run, llm_server, notebook):
    op, a, b = notebook
    first = f"What helped\n- warm-down 0.6 instead of 0.5 [{a.id} -0.0300]\nWhat hurt\n- MATRIX_LR 0.05 [{b.id} failed]"
    llm_server.push(Reply(text=first), Reply(text=answer("lr 0.03", MATRIX, "MATRIX_LR = 0.03")))
    c = op.propose(run.context(a.id)).genome
    (v1,) = run.store.insight_versions("t")
    assert v1.version == 1 and v1.children == 2 and len(v1.items) == 2 and v1.call is not None
    insight_request, mutation_request = llm_server.bodies()[-2:]
    shown = insight_request["messages"][1]["content"]
    assert f"{a.id} [llm_mutation] warm-down over 60% of the budget: 1.270000 (-0.030000" in shown
    assert f"{b.id} [llm_mutation] lr: failed: exit code 1" in shown
    assert "notes version 1, from 2 children" in mutation_request["messages"][1]["content"]
    assert f"- warm-down 0.6 instead of 0.5 [{a.id} -0.0300]" in mutation_request["messages"][1]["content"]
    (call,) = insight_calls(run)
    assert call.outcome == "usable" and "2 bullet(s) kept" in call.why
    # Two more children: version 2 replaces version 1 in the prompts.
    run.add(c, val_bpb=1.29)
    llm_server.push(Reply(text=answer("lr 0.02", MATRIX, "MATRIX_LR = 0.02")))
    d = op.propose(run.context(a.id)).genome
    run.add(d, val_bpb=1.26)
    second = (
        f"What helped\n- MATRIX_LR 0.02 [{d.id} -0.01]\nOpen questions\n- is 0.6 the best warm-down? [{a.id}]"
    )
    llm_server.push(
        Reply(text=second), Reply(text=answer("wd 0.7", "WARMDOWN_FRAC = 0.6", "WARMDOWN_FRAC = 0.7"))
    )
    op.propose(run.context(d.id))
    versions = run.store.insight_versions("t")
    assert [v.version for v in versions] == [1, 2]
    prompt = llm_server.bodies()[-1]["messages"][1]["content"]
    assert "notes version 2, from 4 children" in prompt and f"[{d.id} -0.01]" in prompt
    assert f"[{b.id} failed]" not in prompt  # version 1 is gone from the prompt, not appended to
