"""Runs after runs: export the champion, `evolve init --run NEW`, `evolve run`, three runs deep, on CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from run_support import controller_env, evolve_command, search_settings, settings_workspace

import analysis
from evolve.store import Store
from genome.repo import git_process

SEARCH = search_settings(
    baseline_seeds=2, max_seeds=2, operators=["optuna_tweak"], include=["EMB_LR", "HEAD_LR"], max_changes=2
)
RUNS = ("r1", "r2", "r3")


def _evolve(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = evolve_command(*args)
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_data):
    """r1 from the bigram train.py; r2 from r1's exported champion; r3 from r2's."""
    root = tmp_path_factory.mktemp("next-run")
    ws = settings_workspace(
        root / "ws", SEARCH, commit=True, run="r1", profile="tiny", islands=1, budget=81920
    )
    env = controller_env(root / "home", tiny_data)
    champions: dict[str, str] = {}
    for number, run in enumerate(RUNS):
        if number:
            _evolve("init", "--run", run, env=env, cwd=ws.root)
        _evolve("run", "--gpus", "cpu:2", "--max-experiments", "3", "--interval", "5", env=env, cwd=ws.root)
        exported = _evolve("export", "champion", "--branch", "main", env=env, cwd=ws.root)
        champions[run] = exported.stdout.split(" = ", 1)[1].split("'", 1)[0]
    return ws.root, champions


def test_each_run_starts_from_the_champion_the_last_one_exported(three_runs):
    root, champions = three_runs
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        assert [r.name for r in store.runs()] == list(RUNS)
        for before, run in zip(RUNS, RUNS[1:], strict=False):
            (baseline,) = [i for i in store.individuals(run) if not i.parents]
            assert baseline.decision == "accept" and baseline.origin == champions[before]
            # generation 0 of the next run is the champion's code, exactly
            old = store.get(champions[before])
            assert old.run == before
            same = git_process(root, "diff", "--quiet", old.commit, baseline.commit, "--", "train.py")
            assert same.returncode == 0
            trained = [i for i in store.individuals(run) if i.parents and i.status.value != "rejected"]
            assert len(trained) == 3 and all(i.decision in ("accept", "reject") for i in trained)


def test_ids_are_unique_across_the_runs_of_a_workspace(three_runs):
    root, _ = three_runs
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        everyone = store.individuals()
    out = git_process(
        root, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/evo/"
    ).stdout
    branches = dict(line.split() for line in out.decode().splitlines())
    ids = [b.rsplit("/", 1)[1] for b in branches]
    assert len(ids) == len(set(ids)) == len(everyone)
    # every individual's row names its own branch and commit, and every score the commit it trained
    assert {i.branch: i.commit for i in everyone} == branches
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        evaluations = store.evaluations()
    assert evaluations and all(e.commit == store_commit for e, store_commit in
                               ((e, next(i.commit for i in everyone if i.id == e.individual)) for e in evaluations))  # fmt: skip


def test_the_lineage_shows_every_run_and_the_champions_ancestry_across_runs(three_runs):
    root, champions = three_runs
    df = analysis.lineage(root)
    assert list(dict.fromkeys(df["run"])) == list(RUNS)
    chain = analysis.ancestry(df, champions["r3"])
    assert set(chain["run"]) == set(RUNS)  # back through r2's and r1's champions
    r1_base = df[(df["run"] == "r1") & (df["parents"].map(len) == 0)]["id"].item()
    assert chain["id"].iloc[0] == r1_base
    assert set(champions.values()) <= set(chain["id"])
    roots = df[df["parents"].map(len) == 0].set_index("run")
    assert roots.loc["r2", "origin"] == champions["r1"] and roots.loc["r3", "origin"] == champions["r2"]
    assert set(analysis.descendants(df, champions["r1"])["run"]) == {"r2", "r3"}
    # git alone tells the same story: the origin is a trailer of each run's generation 0
    from_git = analysis.lineage_from_git(root).set_index("id")
    assert from_git.loc[roots["id"], "origin"].tolist() == roots["origin"].tolist()
