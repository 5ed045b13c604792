"""A CPU run against the loopback server: crossovers of unrelated pairs, useless notes dropped, `evolve show`."""

from __future__ import annotations

import re
import threading

import pytest
from loopback import Reply, answer, evolve, make_workspace

from evolve.pairs import Family
from evolve.store import Store

SEARCH = """
[search]
baseline_seeds = 2
max_seeds = 2
confirm_seeds = 1
ahead = 0
proposers = 1

[operators.llm_crossover]
weight = 4
"""
KNOBS = ("HEAD_LR", "EMB_LR", "INIT_STD")


class Researcher:
    """The scripted LLM: a mutation raises one knob of the parent (a different one each time, so
    siblings change different knobs); a crossover raises BETA1 of the draft; the notes request
    gets a useless answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mutations = 0
        self.crossovers = 0

    def __call__(self, body: dict) -> Reply:
        user = body["messages"][-1]["content"]
        if "Rewrite the notebook" in user:
            return Reply(text="I have no idea.")
        with self.lock:
            if "## The draft child" in user:
                self.crossovers += 1
                knob, factor, n = "BETA1", 1.0 - 0.02 * self.crossovers, self.crossovers
                text = user.split("## The draft child", 1)[1]
            else:
                self.mutations += 1
                n = self.mutations  # a new value every time: never code already tried
                knob, factor = KNOBS[n % len(KNOBS)], 3.0 + 0.01 * n
                text = user.split("## train.py of", 1)[1]
        match = re.search(rf"^{knob} = ([0-9.e-]+).*$", text, re.MULTILINE)
        assert match, f"no {knob} line in the prompt"
        new = f"{knob} = {float(match.group(1)) * factor:.4g}"
        why = f"scripted step {n}: {knob} is still far from its best value on this tiny bigram."
        return Reply(text=answer(f"{knob} {match.group(1)} -> {new.split()[-1]}", match.group(0), new, why))


@pytest.mark.slow
def test_llm_crossover_children_come_from_unrelated_pairs_and_show_prints_their_conversation(
    tmp_path, env, llm_server
):
    llm_server.default = Researcher()
    ws = make_workspace(tmp_path, SEARCH, {"m1": [1.0, 2.0]}, insights_every=3)
    flags = ("--llm-model", "m1", "--llm-base-url", llm_server.url)
    # A kept child takes 2 seeds and a new champion a fresh one: 7 children are about 17 runs of the
    # bigram (the first crossovers come at the 6th, once two siblings are kept).
    run = evolve(ws, env, "run", "--gpus", "cpu:1", "--islands", "1", "--max-experiments", "7",
                 "--operators", "llm_mutation,llm_crossover", *flags, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]

    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        family = Family.of(store, "mix")
        crossovers = [i for i in store.individuals("mix") if i.operator == "llm_crossover"]
        failed = [e.payload for e in store.events("mix", kind="proposal_failed")]
        assert crossovers, (failed, [(i.id, i.operator, i.parents) for i in store.individuals("mix")])
        for child in crossovers:
            a, b = child.parents
            assert not family.related(a, b), f"{child.id} crossed {a} with its own relative {b}"
            assert f"from {a}:" in child.description and f"from {b}:" in child.description
        assert not [p for p in failed if p["operator"] == "llm_crossover"], failed
        trained = [c for c in crossovers if c.status.value == "evaluated"]
        assert trained, [(c.id, c.status.value) for c in crossovers]
        # The useless notes: never stored, each call recorded unusable and charged to no child.
        notes_calls = store.llm_calls("mix", purpose="insights")
        assert notes_calls and store.insight_versions("mix") == []
        assert all(c.outcome == "unusable" and c.individual is None for c in notes_calls)
        assert all(c.outcome == "usable" for c in store.llm_calls("mix") if c.purpose != "insights")
        child = trained[0]
        (call,) = store.llm_calls("mix", individual=child.id)

    shown = evolve(ws, env, "show", child.id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"operator llm_crossover, parents {', '.join(child.parents)}" in out
    assert (
        f"LLM: model m1, 1 call(s), {call.prompt_tokens + call.completion_tokens:,} tokens, ${call.cost:.4f}"
        in out
    )
    assert "calls: crossover usable" in out and "rationale: scripted step" in out
    assert "LLM call 1 (crossover, m1): prompt" in out and "## The two parents" in out  # the prompt
    assert "## The draft child" in out and ">>>>>>> REPLACE" in out  # and the answer
    assert "I have no idea." not in out
    quiet = evolve(ws, env, "show", child.id, "--no-conversation")
    assert "LLM: model m1" in quiet.stdout and "## The two parents" not in quiet.stdout
