"""The live view: its snapshots, which read the whole run, never take more than a twentieth of the controller's time."""

from __future__ import annotations

import io
import json
import time

from rich.console import Console

from evolve.live import SNAPSHOT_SHARE, LiveView


def test_a_slow_snapshot_is_taken_less_often_than_the_refresh_asks():
    calls: list[float] = []

    def source():
        calls.append(time.time())
        time.sleep(0.05)  # a long run's snapshot
        raise LookupError("no run row yet")  # the view then draws nothing

    view = LiveView(source, Console(file=io.StringIO()), interval=0.0, refresh=0.0)
    end = time.time() + 1.5
    while time.time() < end:
        view.tick()
        time.sleep(0.01)
    # 1.5 s at most 1/20 busy with 0.05 s snapshots: two of them, where refresh=0 would take ~25
    assert 1 <= len(calls) <= 1 + 1.5 / (SNAPSHOT_SHARE * 0.05)
    assert all(b - a >= SNAPSHOT_SHARE * 0.05 for a, b in zip(calls, calls[1:], strict=False))


def test_status_counts_the_runs_set_aside_for_their_key(tmp_path):
    """Runs under another key than the run's are counted by `evolve status` (screen, plain line,
    JSON): the engine's `aside` events (never recorded) and ok scores the store holds under
    another key, both by that key."""
    from pathlib import Path

    from click.testing import CliRunner

    from evolve.cli import main
    from evolve.live import aside_text, event_text, plain_line, render, snapshot
    from evolve.store import Evaluation, Purpose, Store
    from genome.workspace import init_workspace

    bigram = Path(__file__).parent / "data" / "train_bigram.py"
    ws = init_workspace(tmp_path / "ws", run="t", profile="h100", budget=30, train_py=bigram)
    h200, a100 = "depth 12, 30 s on NVIDIA H200", "depth 12, 30 s on NVIDIA A100"
    with Store(ws.state_dir / "evolve.db") as store:
        store.add_run("t", strategy="population", profile="h100", settings={"depth": 12, "budget": 30})
        base = ws.repo().ensure_baseline()
        store.add_individual(id=base.id, run="t", commit=base.commit, operator="baseline")
        for seed, gpu in ((42, "NVIDIA H200"), (43, "NVIDIA A100"), (44, "NVIDIA H200")):
            store.record_evaluation(Evaluation(individual=base.id, seed=seed, status="ok", val_bpb=3.0,
                                               purpose=Purpose.BASELINE, depth=12, budget=30, profile="h100",
                                               budget_unit="seconds", gpu_name=gpu))  # fmt: skip
        for _ in range(2):
            store.add_event("aside", {"id": base.id, "seed": 45, "purpose": "baseline", "key": a100,
                                      "run_key": h200, "reason": f"scored at {a100}, the run's scores are at {h200}"},
                            run="t")  # fmt: skip
        snap = snapshot(store, "t", depth=12)
    assert snap.score_key == h200 and snap.set_aside == {a100: 3}  # 2 events + 1 score left out
    assert "set aside 3" in plain_line(snap)
    assert aside_text(snap) == f"set aside (not scored: the run's scores are at {h200}): 3 at {a100}"
    screen = Console(file=io.StringIO(), width=200)
    screen.print(render(snap))
    assert f"3 at {a100}" in screen.file.getvalue()
    line = event_text(
        "aside", {"id": "g0000", "seed": 45, "purpose": "baseline", "reason": f"scored at {a100}"}
    )
    assert line == f"g0000 baseline seed 45: set aside, scored at {a100}"

    out = CliRunner().invoke(main, ["status", "-w", str(ws.root), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["score_key"] == h200 and data["set_aside"] == {a100: 3}
