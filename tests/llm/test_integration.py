"""`evolve run` against the loopback server: all four operators train children; status and lineage show LLM use."""

from __future__ import annotations

import json
import math
import re
import threading

import pytest
from click.testing import CliRunner
from loopback import BIGRAM, SECRET, Reply, answer, evolve, make_workspace

import analysis
from evolve.cli import main
from evolve.engine import Engine, EngineConfig
from evolve.errors import EvolveError
from evolve.scheduler import StopReason
from evolve.store import Status, Store
from genome.repo import git_process
from genome.settings import SETTINGS_FILE
from genome.workspace import init_workspace
from trainer import LocalExecutor

OPERATORS = ("llm_mutation", "llm_crossover", "merge_crossover", "optuna_tweak")
PROMPT, COMPLETION = 100, 20  # the tokens every scripted answer reports (loopback's default usage)
PRICES = {"m1": [100.0, 200.0]}  # USD per million tokens: each call costs $0.014
CALL_USD = (PROMPT * 100.0 + COMPLETION * 200.0) / 1e6
# One device, one proposer, nothing proposed ahead: each draw sees the decisions before it, so the
# run is the same every time (the bigram's score depends only on its code and seed).
SEQUENTIAL = """
[search]
baseline_seeds = 2
max_seeds = 2
ahead = 0
proposers = 1
"""
MIX = (
    SEQUENTIAL
    + """
[operators.optuna_tweak]
include = ["EMB_LR"]
max_changes = 1

[operators.llm_mutation]
weight = 3

[operators.merge_crossover]
weight = 6
"""
)


class Researcher:
    """The scripted LLM: a mutation raises HEAD_LR, INIT_STD or EMB_LR of the parent in the prompt; a
    crossover lowers BETA1 of the draft. Every answer applies and makes new code."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def __call__(self, body: dict) -> Reply:
        with self.lock:
            self.calls += 1
            n = self.calls
        user = body["messages"][-1]["content"]
        if "## The draft child" in user:
            knob, text, factor = "BETA1", user.split("## The draft child", 1)[1], 1.0 - 0.01 * n
        else:  # a new value every time: never code already tried (that would be sent back for repair)
            knob, text, factor = (  # three knobs in turn: two children rarely retune the same one
                ("HEAD_LR", "INIT_STD", "EMB_LR")[n % 3],
                user.split("## train.py of", 1)[1],
                3.0 + 0.01 * n,
            )
        match = re.search(rf"^{knob} = ([0-9.e-]+).*$", text, re.MULTILINE)
        assert match, f"no {knob} line in the prompt"
        new = f"{knob} = {min(0.99, float(match.group(1)) * factor):.4g}"
        return Reply(text=answer(f"{knob} {match.group(1)} -> {new.split()[-1]}", match.group(0), new))


def _count(n: int) -> str:
    return f"{n / 1000:.1f}K" if n >= 1000 else str(n)


def ok_children(store: Store, run: str) -> dict[str, list]:
    """Per operator, its children with an ok evaluation."""
    out: dict[str, list] = {}
    for ind in store.individuals(run):
        if ind.parents and any(e.ok for e in store.evaluations(ind.id)):
            out.setdefault(ind.operator, []).append(ind)
    return out


@pytest.mark.slow
def test_every_operator_trains_children_and_status_shows_llm_calls_tokens_and_cost(tmp_path, env, llm_server):
    llm_server.default = Researcher()
    ws = make_workspace(tmp_path, MIX, PRICES)
    flags = ("--llm-model", "m1", "--llm-base-url", llm_server.url, "--max-llm-usd", "50")
    run = evolve(ws, env, "run", "--gpus", "cpu:1", "--islands", "1", "--max-experiments", "8",
                 "--interval", "1", *flags)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "done: the run has trained 8 children in all its sessions" in run.stdout
    assert re.search(r"LLM: \d+ calls, [\d.]+K? tokens", run.stdout)  # the periodic line, no terminal

    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        trained = ok_children(store, "mix")
        every = [(i.id, i.operator, i.status.value, i.guard_reason) for i in store.individuals("mix")]
        failed = [e.payload.get("error") for e in store.events("mix", kind="proposal_failed")]
        assert set(trained) == set(OPERATORS), (every, failed)
        for op in ("llm_crossover", "merge_crossover"):
            for child in trained[op]:
                assert len(child.parents) == 2
                parents = git_process(ws.root, "rev-list", "--parents", "-n1", child.commit).stdout.split()
                assert len(parents) == 3, f"{child.id} by {op} is not a merge commit"
        spend = store.llm_spend("mix")
        calls = len(llm_server.requests)
        assert spend["calls"] == calls and spend["failures"] == 0
        assert spend["prompt_tokens"] == PROMPT * calls and spend["completion_tokens"] == COMPLETION * calls
        assert spend["cost"] == pytest.approx(CALL_USD * calls)
        llm_children = [i for i in store.individuals("mix") if i.operator.startswith("llm_")]
    assert not any(SECRET in text for text in (run.stdout, run.stderr))

    # Every call is counted for the child it made (no LLM proposal failed here, so all of them).
    df = analysis.lineage(ws.root).set_index("id")
    for ind in llm_children:
        assert df.loc[ind.id, "llm_tokens"] == PROMPT + COMPLETION, ind.id
        assert df.loc[ind.id, "llm_cost"] == pytest.approx(CALL_USD)
    others = df[~df["operator"].str.startswith("llm_")]
    assert others["llm_cost"].isna().all()
    assert df["llm_cost"].sum() == pytest.approx(CALL_USD * calls)

    status = evolve(ws, env, "status")
    assert status.returncode == 0, status.stderr
    total = (PROMPT + COMPLETION) * calls
    shown = re.search(r"LLM: (\d+) calls, (\S+) tokens \((\S+) prompt \+ (\S+) completion\)", status.stdout)
    assert shown, status.stdout
    assert shown.groups() == (str(calls), *(_count(n) for n in (total, PROMPT * calls, COMPLETION * calls)))
    assert f"${CALL_USD * calls:.4f}" in status.stdout
    data = json.loads(evolve(ws, env, "status", "--json").stdout)
    assert data["llm"]["calls"] == calls and data["llm"]["tokens"] == total
    assert data["llm"]["cost"] == pytest.approx(CALL_USD * calls)
    assert list(data["islands"]) == ["0"]  # the run's --islands 1, not evolve.toml's 2


@pytest.mark.slow
def test_the_usd_cap_stops_llm_proposals_and_the_other_operators_go_on(tmp_path, env, llm_server):
    llm_server.default = Researcher()
    ws = make_workspace(tmp_path, SEQUENTIAL, PRICES)
    cap = ("--llm-model", "m1", "--llm-base-url", llm_server.url, "--max-llm-usd", str(CALL_USD / 2))
    # Only the LLM mutation: its first call crosses the cap, its child is trained, the run stops.
    first = evolve(ws, env, "run", "--gpus", "cpu:1", "--operators", "llm_mutation", *cap)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "every operator is spent" in first.stdout
    assert "operator llm_mutation is spent" in first.stdout
    assert len(llm_server.requests) == 1
    # Resumed with the Optuna tweak too: the spend so far still counts, so only Optuna proposes.
    again = evolve(ws, env, "run", "--gpus", "cpu:1", "--operators", "llm_mutation,optuna_tweak",
                   "--max-experiments", "3", *cap)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "done: the run has trained 3 children in all its sessions" in again.stdout
    assert len(llm_server.requests) == 1
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        children = [i for i in store.individuals("mix") if i.parents]
        assert [c.operator for c in children] == ["llm_mutation", "optuna_tweak", "optuna_tweak"]
        assert all(c.status == Status.EVALUATED for c in children)
        spent = store.events("mix", kind="operator_exhausted")
        assert [(e.payload["operator"], e.payload["remaining"]) for e in spent] == [
            ("llm_mutation", []),
            ("llm_mutation", ["optuna_tweak"]),
        ]
        assert not store.events("mix", kind="proposal_failed")  # no draw was wasted on a spent operator
        assert math.isclose(store.llm_spend("mix")["cost"], CALL_USD)


def test_a_bad_llm_model_flag_is_one_line_and_exit_1(tmp_path):
    ws = init_workspace(tmp_path / "ws", run="r", profile="tiny")
    for value, message in (("=3", "give a model name"), ("m=zero", "positive number"), ("m=-1", "positive")):
        result = CliRunner().invoke(main, ["run", "-w", str(ws.root), "--llm-model", value])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_weight_zero_leaves_an_llm_operator_out_so_no_endpoint_is_needed(
    tmp_path, use_tiny_data, monkeypatch
):
    for name in ("OPENAI_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    ws = init_workspace(tmp_path / "ws", run="w0", profile="tiny", budget=81920, train_py=BIGRAM)
    named = {"operators": ("llm_mutation", "optuna_tweak")}
    executor = LocalExecutor.cpu(1)
    refused = Engine(ws, EngineConfig.from_workspace(ws, **named), executor)
    with pytest.raises(EvolveError, match="operator llm_mutation: no LLM model"):
        refused.setup()
    refused.close()
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write("\n[operators.llm_mutation]\nweight = 0\n")
    engine = Engine(ws, EngineConfig.from_workspace(ws, **named), executor)
    try:
        engine.setup()
        assert set(engine.operators) == {"optuna_tweak"}
        skipped = engine.store.events("w0", kind="operator_skipped")
        assert [e.payload["reason"] for e in skipped] == ["[operators.llm_mutation] weight = 0"]
    finally:
        engine.finish(StopReason.DONE)
        engine.close()
        executor.shutdown()
