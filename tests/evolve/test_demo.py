"""`evolve demo` completes offline on CPU: prepares, evolves about 12 children, prints the leaderboard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evolve.store import Status, Store


@pytest.mark.slow
def test_demo_completes_and_points_at_the_next_commands(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env["EVOLVE_HOME"] = str(tmp_path / "home")
    demo = tmp_path / "demo"
    # a quarter of the default budget: the demo's steps, not its scores, are what is checked here
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("evolve")), "demo", "--dir", str(demo), "--budget", "16384"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(16,384 training tokens each)" in proc.stdout
    out = proc.stdout
    for piece in (
        "preparing the tiny dataset",
        "top 8 of run demo",
        "Next, try:",
        "evolve show g",
        "evolve lineage",
        "evolve report",
    ):
        assert piece in out
    with Store(demo / ".evolve" / "evolve.db", readonly=True) as store:
        children = [i for i in store.individuals("demo") if i.parents]
        trained = [c for c in children if c.status != Status.REJECTED]
        assert len(trained) == 12
        assert all(c.status.is_finished() and c.decision for c in trained)
        assert (
            store.scores(2, "demo")["g0000"].n >= 4
        )  # the baseline's seeds (and any its children asked for)
        assert {c.operator for c in children} <= {"optuna_tweak", "merge_crossover"}
    # the workspace is ready for the commands the demo suggests
    status = subprocess.run(
        [str(Path(sys.executable).with_name("evolve")), "status", "--json"],
        env=env, capture_output=True, text=True, cwd=demo, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0 and '"run": "demo"' in status.stdout
