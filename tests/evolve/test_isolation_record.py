"""Every score keeps how train.py was isolated and what its budget counts; `evolve status` warns on unisolated ones."""

from __future__ import annotations

import json

from click.testing import CliRunner

from evolve.cli import main
from evolve.store import Evaluation, Purpose, Store
from genome.workspace import init_workspace


def _result(isolation: str) -> dict:
    return {
        "status": "ok", "reason": "", "metrics": {"val_bpb": 2.5, "training_seconds": 3.0}, "wall_seconds": 9.0,
        "depth": 2, "budget": 4096.0, "budget_unit": "tokens", "seed": 42, "profile": "tiny",
        "devices": ["cpu"], "isolation": isolation,
    }  # fmt: skip


def test_isolation_and_the_budget_unit_are_stored_and_status_warns_when_a_score_had_none(tmp_path):
    ws = init_workspace(tmp_path / "ws", run="iso", profile="tiny")
    runner = CliRunner()
    with Store(ws.state_dir / "evolve.db") as store:
        store.add_run("iso", strategy="population", profile="tiny", settings={"islands": 1, "depth": 2})
        store.add_individual(id="g0000", run="iso", commit=ws.repo().baseline().commit, operator="baseline",
                             description="baseline")  # fmt: skip
        store.record_evaluation(
            Evaluation.from_result("g0000", _result("bubblewrap 0.8.0"), purpose=Purpose.BASELINE)
        )
    quiet = runner.invoke(main, ["status", "-w", str(ws.root)])
    assert quiet.exit_code == 0, quiet.output
    assert "without isolation" not in quiet.output

    with Store(ws.state_dir / "evolve.db") as store:
        result = dict(_result("none"), seed=43)
        store.record_evaluation(Evaluation.from_result("g0000", result, purpose=Purpose.BASELINE))
        kept = {e.seed: (e.isolation, e.budget_unit) for e in store.evaluations("g0000")}
    assert kept == {42: ("bubblewrap 0.8.0", "tokens"), 43: ("none", "tokens")}
    loud = runner.invoke(main, ["status", "-w", str(ws.root)])
    assert loud.exit_code == 0, loud.output
    assert "WARNING: 1 score(s) of this run were made without isolation" in loud.output
    data = json.loads(runner.invoke(main, ["status", "-w", str(ws.root), "--json"]).output)
    assert data["unisolated_evaluations"] == 1
