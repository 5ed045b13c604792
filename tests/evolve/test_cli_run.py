"""End to end through the CLI: `evolve run` (population, 2 islands, both operators) and the read commands."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from run_support import controller_env, evolve_command, search_settings, settings_workspace

from evolve.champion import choose_champion
from evolve.cli import main
from evolve.live import LiveView, snapshot
from evolve.store import LineageKind, Status, Store
from genome.repo import git_process
from genome.workspace import init_workspace

SEARCH = search_settings(baseline_seeds=3, max_seeds=2, confirm_seeds=1, migrate_every=3)


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, tiny_data):
    """One real evolution: 10 children on 2 CPU slots, run by `evolve run` with no terminal."""
    root = tmp_path_factory.mktemp("e2e")
    ws = settings_workspace(
        root / "ws", SEARCH, commit=True, run="e2e", profile="tiny", islands=2, budget=81920
    )
    env = controller_env(root / "home", tiny_data)
    cmd = evolve_command(
        "run", "-w", str(ws.root), "--gpus", "cpu:2", "--max-experiments", "10", "--interval", "2"
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws, proc.stdout, env


@pytest.fixture
def store(evolved):
    ws, _, _ = evolved
    with Store(ws.state_dir / "evolve.db", readonly=True) as s:
        yield s


def test_population_run_trains_ten_children_from_both_operators_with_merge_commits(evolved, store):
    ws, _, _ = evolved
    children = [i for i in store.individuals("e2e") if i.parents]
    trained = [c for c in children if c.status != Status.REJECTED]
    assert len(trained) == 10
    assert {c.operator for c in trained} == {"optuna_tweak", "merge_crossover"}
    merges = [c for c in children if c.operator == "merge_crossover"]
    assert all(len(c.parents) == 2 and store.lineage(c.id)[0][1] == LineageKind.MERGE.value for c in merges)
    git_merges = git_process(ws.root, "rev-list", "--merges", "--branches=evo/e2e/*").stdout.split()
    assert {m.decode() for m in git_merges} == {c.commit for c in merges}
    # both islands got children
    assert {c.island for c in trained} == {0, 1}


def test_every_individual_ends_with_a_recorded_status_and_decision(evolved, store):
    everything = store.individuals("e2e")
    assert all(i.status.is_finished() for i in everything)
    for ind in everything:
        evaluations = store.evaluations(ind.id)
        if ind.status == Status.REJECTED:
            assert ind.guard_reason and evaluations == []
            continue
        assert evaluations and ind.decision in ("accept", "reject")
        assert all(e.profile == "tiny" and e.depth == 2 and e.data_fingerprint for e in evaluations)
        assert all(
            e.log_path and e.log_path.endswith(".gz") and Path(e.log_path).is_file() for e in evaluations
        )
    # the store and git hold the same individuals
    branches = git_process(
        evolved[0].root, "for-each-ref", "--format=%(refname:short)", "refs/heads/evo/e2e/"
    )
    assert sorted(b.rsplit("/", 1)[1] for b in branches.stdout.decode().split()) == sorted(
        i.id for i in everything
    )
    ((reason, duty),) = [
        (r["stop_reason"], r["training_seconds"] / r["held_seconds"]) for r in _sessions(store)
    ]
    assert reason == "done" and 0 < duty < 1


def _sessions(store):
    with store.transaction() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM sessions")]


def test_the_live_view_prints_plain_lines_without_a_terminal(evolved):
    _, out, _ = evolved
    summaries = [line for line in out.splitlines() if line.startswith("[e2e ")]
    assert summaries, out[-2000:]
    last = summaries[-1]
    for piece in ("devices 0/2 busy", "queue 0", "best g", "noise floor", "exp/h", "duty"):
        assert piece in last
    assert "search seed 42: ok val_bpb" in out and "session end: session=1, reason=done" in out
    assert "by merge_crossover from" in out and "top 5 of run e2e" in out
    assert " reject: " in out and "paired on seed 42" in out  # each decision with its numbers
    assert "\x1b[" not in out  # no terminal escapes in a log file
    assert not last.startswith("[e2e 0:00:00]")  # the line after the session ended keeps its clock
    # --max-experiments is a total of the run: the last line says so (a resumed run counts the ones before)
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith(
            "done: the run has trained 10 children in all its sessions (--max-experiments 10 is that total"
        )
    )


def test_the_live_view_redraws_in_place_in_a_terminal(evolved, store):
    ws, _, _ = evolved
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=140)
    view = LiveView(
        lambda: snapshot(store, "e2e", depth=2, islands=2, state_dir=ws.state_dir), console, refresh=0
    )
    with view:
        view.tick()
        view.on_event("evaluated", {"id": "g0999"})  # shown in the panel, not as a line
    text = buffer.getvalue()
    assert view.terminal and "\x1b[" in text
    assert "population" in text and "duty cycle" in text and "g0999" not in text
    assert "budget 81,920 training tokens" in text  # tiny's budget is tokens, not seconds


def test_status_top_show_and_lineage_read_the_run(evolved, store):
    ws, _, env = evolved
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    status = runner.invoke(main, ["status", *w, "--json"], env=env)
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["run"] == "e2e" and data["active"] is False and data["queued"] == 0
    assert set(data["islands"]) == {"0", "1"} and data["duty"]["duty_cycle"] > 0
    champ = choose_champion(store, "e2e", 2)
    assert data["best"]["id"] == champ.id and data["best_note"] == champ.reason
    assert data["disk_bytes"] > 0 and data["log_files"] > 0
    screen = runner.invoke(main, ["status", *w], env=env)
    assert screen.exit_code == 0 and "noise floor" in screen.output and "merge_crossover" in screen.output

    top = runner.invoke(main, ["top", "3", *w, "--json"], env=env)
    rows = json.loads(top.output)
    assert len(rows) == 3 and rows[0]["mean"] <= rows[1]["mean"] <= rows[2]["mean"]
    # on screen the rejected children are a table of their own, after the kept ones
    screen = runner.invoke(main, ["top", "50", *w], env=env).output
    kept, _, rejected = screen.partition("rejected: not shown better than their parent")
    assert rejected, screen
    kept_ids, rejected_ids = (re.findall(r"^│ +\d+ │ (g\d+) │", part, re.M) for part in (kept, rejected))
    assert kept_ids and all(store.get(i).decision != "reject" for i in kept_ids)
    assert rejected_ids and all(store.get(i).decision == "reject" for i in rejected_ids)
    assert sorted(kept_ids + rejected_ids) == sorted(store.scores(2, "e2e"))
    help_text = " ".join(runner.invoke(main, ["run", "--help"]).output.split())
    assert "this many children IN ALL: a total over every session, unlike --hours" in help_text

    merge = next(i for i in store.individuals("e2e") if i.operator == "merge_crossover")
    show = runner.invoke(main, ["show", merge.id, *w], env=env)
    assert show.exit_code == 0, show.output
    assert f"diff against {merge.parents[0]}" in show.output and "+++ b/train.py" in show.output
    assert "evaluations" in show.output and "log tail" in show.output and "val_bpb" in show.output
    assert "judged: " in show.output and ("paired on seed" in show.output or "fails on a seed" in show.output)

    tree = runner.invoke(main, ["lineage", merge.id, *w], env=env)
    assert tree.exit_code == 0
    for ancestor in (*merge.parents, "g0000"):
        assert ancestor in tree.output

    champion = store.get(champ.id)
    exported = runner.invoke(main, ["export", "champion", "--branch", "best", *w], env=env)
    assert exported.exit_code == 0, exported.output
    shown = git_process(ws.root, "show", "best:train.py").stdout
    assert shown == git_process(ws.root, "show", f"{champion.commit}:train.py").stdout

    missing = runner.invoke(main, ["show", "g9999", *w], env=env)
    assert (
        missing.exit_code == 1 and missing.output.count("\n") == 1 and "no individual g9999" in missing.output
    )


def test_user_errors_are_one_line(tmp_path, tiny_data):
    runner = CliRunner()
    env = controller_env(tmp_path / "home", tiny_data)
    nowhere = runner.invoke(main, ["run", "-w", str(tmp_path)], env=env)
    assert nowhere.exit_code == 1 and nowhere.output.startswith("error: no evolve.toml")
    ws = init_workspace(tmp_path / "ws", run="fresh", profile="tiny")
    for args in (["status"], ["top"], ["run", "--gpus", "banana"]):
        result = runner.invoke(main, [*args, "-w", str(ws.root)], env=env)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output


def test_without_prepared_data_the_hint_names_the_workspaces_profile_and_source(tmp_path):
    """Not $EVOLVE_PROFILE's (unset: h100) and not twice: the command that prepares this workspace's data."""
    env = controller_env(tmp_path / "empty-home")
    ws = init_workspace(tmp_path / "ws", run="fresh", profile="tiny")
    result = CliRunner().invoke(main, ["run", "-w", str(ws.root), "--gpus", "cpu"], env=env)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: no prepared data at ")
    assert result.output.count("evolve prepare") == 1 and "h100" not in result.output
    assert "`evolve prepare --profile tiny --source builtin`" in result.output
