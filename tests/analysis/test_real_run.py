"""The analysis of a store written by a REAL tiny evolution (`evolve init` + `evolve run` on CPU)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from run_support import controller_env

import analysis
from analysis import plots
from evolve.champion import choose_champion
from evolve.store import Store

pytestmark = pytest.mark.slow


def evolve(*args: str, cwd: Path, env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from autoevolve.cli import main; main()", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def real_run(tiny_data, tmp_path_factory) -> Path:
    """A small population run: 2 islands, 2 CPU workers, 8,192 training tokens (2 steps) a run, 6 children."""
    where = tmp_path_factory.mktemp("real")
    env = controller_env(where / "home", tiny_data, EVOLVE_PROFILE="tiny")
    init = evolve("init", str(where / "ws"), "--run", "real", "--profile", "tiny", cwd=where, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    run = evolve(
        "run", "-w", str(where / "ws"), "--gpus", "cpu:2", "--islands", "2", "--budget", "8192",
        "--baseline-seeds", "2", "--max-experiments", "6", "--interval", "5", cwd=where, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return where / "ws"


def test_lineage_of_a_real_run(real_run):
    df = analysis.lineage(real_run)
    assert df.attrs["source"] == "store" and set(df["run"]) == {"real"}
    base = df[df["parents"].map(len) == 0]
    assert len(base) == 1 and base["val_bpb_n"].iloc[0] >= 2 and base["delta_baseline"].iloc[0] == 0
    kids = df[df["parents"].map(len) > 0]
    assert len(kids) >= 6  # --max-experiments counts trained children; refused ones come on top
    assert df["status"].isin(["proposed", "queued", "running", "evaluated", "rejected", "failed"]).all()
    scored = df[df["val_bpb_mean"].notna()]
    assert (scored["depth"] == 2).all() and (scored["val_bpb_mean"] > 0).all()
    # Deltas are what they claim: against the best parent and against the baseline.
    means = dict(zip(df["id"], df["val_bpb_mean"], strict=True))
    for row in scored[scored["parents"].map(len) > 0].itertuples():
        parent_means = [means[p] for p in row.parents if means[p] == means[p]]
        if parent_means:
            assert row.delta_parent == pytest.approx(row.val_bpb_mean - min(parent_means))
        assert row.delta_baseline == pytest.approx(row.val_bpb_mean - base["val_bpb_mean"].iloc[0])
    # Everything in the store is also in git: the rebuilt lineage agrees on the family tree.
    ev = analysis.evaluations(real_run)
    assert len(ev) == df["evaluations"].sum() and (ev["profile"] == "tiny").all()
    assert ev["seed"].notna().all() and ev["data_fingerprint"].str.len().gt(0).all()
    assert (ev.loc[ev["status"] == "ok", "metrics_num_steps"] >= 1).all()  # scored runs trained
    assert df["gpu_seconds"].sum() == pytest.approx(ev["wall_seconds"].fillna(0).sum())


def test_queries_and_stats_on_a_real_run(real_run):
    df = analysis.lineage(real_run)
    root = df.loc[df["parents"].map(len) == 0, "id"].iloc[0]
    assert set(analysis.descendants(df, root)["id"]) == set(df["id"]) - {root}
    for ind in df["id"]:
        anc = analysis.ancestry(df, ind)
        assert anc["id"].iloc[0] == root and anc["id"].iloc[-1] == ind
    ops = analysis.operator_stats(df)
    assert ops["children"].sum() == len(df) - 1
    assert set(ops["operator"]) <= {"optuna_tweak", "merge_crossover", "llm_mutation", "llm_crossover"}
    isl = analysis.island_stats(df)
    assert isl["individuals"].sum() == len(df) and set(isl["island"]) <= {0, 1}


def test_evolve_report_on_a_real_run_has_the_three_plots(real_run, tmp_path):
    env = {**os.environ}
    proc = evolve("report", cwd=real_run, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = real_run / ".evolve" / "report" / "real.html"
    text = html.read_text()
    images = re.findall(r'<img id="plot-(\w+)" alt="\w+" src="data:image/png;base64,([^"]+)"', text)
    assert [name for name, _ in images] == ["progress", "lineage_tree", "transfer"]
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for _, data in images)
    champ = analysis.champion(analysis.lineage(real_run))
    assert f"Champion <b>{champ['id']}</b>" in text
    with Store(real_run / ".evolve" / "evolve.db", readonly=True) as store:  # the export's own rule
        assert champ["id"] == choose_champion(store, "real", 2).id
    df = analysis.lineage(real_run)
    for name, draw in plots.PLOTS.items():
        assert plots.save(draw(df), tmp_path / f"{name}.png").stat().st_size > 1000
