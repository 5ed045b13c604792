"""`evolve validate` with real tiny runs: depth 2 stands in for 12 and depth 4 for 24, on CPU slots."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_support import controller_env, evolve_command, search_settings, settings_workspace

import analysis
from evolve.champion import Verdict, stored_verdicts
from evolve.cli import main
from evolve.engine import Engine, EngineConfig
from evolve.operators import Proposal
from evolve.scheduler import StopConditions
from evolve.store import Purpose, Status, Store
from evolve.validate import ValidationSpec, validate
from genome import commit_hyperparams
from genome.repo import MACHINE_IDENTITY, git_process, run_git
from genome.settings import SETTINGS_FILE
from genome.workspace import open_workspace
from trainer import LocalExecutor

pytestmark = pytest.mark.slow

# A bigram model trained on one thread under the tiny profile's token budget: its score depends only
# on the code, the depth and the seed. SHALLOW_BOOST multiplies the learning rates at depth <= 2 and
# divides them deeper: a stand-in for a trick that helps the small model and hurts the large one.
TRAIN_DEPTH = '''"""A bigram whose best learning rate depends on depth (for evolve validate's tests)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

import prepare

# ---- hyperparameters: the search edits these ----
EMB_LR = 0.002  # too low on purpose
HEAD_LR = 0.002  # too low on purpose
SHALLOW_BOOST = 1.0  # learning rates x this at depth <= 2, / this deeper
DIM = 32
BATCH_SIZE = 8

cfg = prepare.run_config()
if cfg.world_size > 1:
    dist.init_process_group("gloo")
torch.manual_seed(cfg.seed)
torch.set_num_threads(1)
vocab = prepare.load_tokenizer().vocab_size
boost = SHALLOW_BOOST if cfg.depth <= 2 else 1.0 / SHALLOW_BOOST
emb = torch.nn.Embedding(vocab, DIM)
head = torch.nn.Linear(DIM, vocab, bias=False)
for p in (emb.weight, head.weight):
    torch.nn.init.normal_(p, std=0.02)
model = torch.nn.Sequential(emb, head)
opt = torch.optim.Adam([{"params": emb.parameters(), "lr": EMB_LR * boost},
                        {"params": head.parameters(), "lr": HEAD_LR * boost}])
loader = prepare.train_loader(model, batch_size=BATCH_SIZE)
for x, y in loader:
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
if cfg.world_size > 1:
    dist.barrier()
    dist.destroy_process_group()
prepare.report(cfg, num_steps=loader.steps, depth=cfg.depth)
'''
SEARCH = search_settings(
    baseline_seeds=4, max_seeds=3, confirm_seeds=1, operators=["optuna_tweak"], include=["EMB_LR", "HEAD_LR"]
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_data):
    """A run searched at depth 2 by the engine: the baseline, a child with better learning rates
    (`good`) and a child with the shallow-only boost (`shallow`, the best at depth 2)."""
    root = tmp_path_factory.mktemp("searched")
    script = root / "train_depth.py"
    script.write_text(TRAIN_DEPTH)
    ws = settings_workspace(root / "ws", SEARCH, commit=True, train_py=script, run="v", profile="tiny", islands=1,
                            budget=61440)  # fmt: skip
    old = os.environ.get("EVOLVE_DATA")
    os.environ["EVOLVE_DATA"] = str(tiny_data)
    try:
        with LocalExecutor.cpu(2) as ex:
            engine = Engine(ws, EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=2)), ex)
            engine.start()
            base = engine.repo.baseline()
            good = commit_hyperparams(engine.repo, base, {"EMB_LR": 0.02, "HEAD_LR": 0.02}, "optuna_tweak")
            shallow = commit_hyperparams(engine.repo, base, {"SHALLOW_BOOST": 30.0}, "optuna_tweak")
            for genome in (good, shallow):
                engine._intake(Proposal(genome), island=0)
            engine.finish(engine.scheduler.run(install_signals=False))
            engine.close()
    finally:
        if old is None:
            os.environ.pop("EVOLVE_DATA", None)
        else:
            os.environ["EVOLVE_DATA"] = old
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        assert {store.get(i).decision for i in (good.id, shallow.id)} == {"accept"}
        scores = store.scores(2, "v")
    assert scores[shallow.id].mean < scores[good.id].mean < scores["g0000"].mean
    return ws.root, good.id, shallow.id


def _copy(searched, tmp_path) -> tuple[Path, str, str]:
    root, good, shallow = searched
    dst = tmp_path / "ws"
    shutil.copytree(root, dst, symlinks=True)
    return dst, good, shallow


def _validation_rows(root: Path):
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        return store.evaluations(run="v", purpose=Purpose.VALIDATION)


def _worktrees(root: Path) -> list[str]:
    out = git_process(root, "worktree", "list", "--porcelain").stdout.decode()
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def test_validate_reruns_the_elites_deeper_keeps_verdicts_and_the_champion_transfers(
    searched, tmp_path, use_tiny_data
):
    root, good, shallow = _copy(searched, tmp_path)
    runner = CliRunner()
    w = ["-w", str(root)]
    args = ["validate", *w, "--depth", "4", "--top", "2", "--budget", "61440", "--gpus", "cpu:2", "--json"]
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        before = store.evaluations(run="v")
        statuses = {i.id: (i.status, i.decision) for i in store.individuals("v")}

    first = runner.invoke(main, [*args, "--seeds", "1"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["candidates"] == [shallow, good]  # the top 2 at depth 2, best first
    assert (data["ran"], data["skipped"], data["failed"]) == (3, 0, 0), first.stderr[-2000:]
    assert "validating g0000" in first.stderr and "seed 42: ok val_bpb" in first.stderr

    second = runner.invoke(main, [*args, "--seeds", "2"])  # resumes: only seed 43 is missing
    assert second.exit_code == 0, second.output
    data = json.loads(second.stdout)
    assert (data["ran"], data["skipped"]) == (3, 3)

    rows = _validation_rows(root)
    assert sorted((e.individual, e.seed) for e in rows) == sorted(
        (i, s) for i in ("g0000", good, shallow) for s in (42, 43)
    )
    assert all(e.ok and e.depth == 4 and e.metrics["depth"] == 4 and e.budget == 61440.0 for e in rows)
    assert all(e.profile == "tiny" and e.data_fingerprint == before[0].data_fingerprint for e in rows)
    assert all(e.log_path.endswith(".gz") and Path(e.log_path).is_file() for e in rows)
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        # the search's runs and decisions are untouched
        assert [e.id for e in store.evaluations(run="v") if e.purpose != Purpose.VALIDATION] == [
            e.id for e in before
        ]
        assert {i.id: (i.status, i.decision) for i in store.individuals("v")} == statuses
        kept = {v.individual: v.verdict for v in stored_verdicts(store, "v", 4)}
    assert kept == {good: Verdict.TRANSFERS, shallow: Verdict.DOES_NOT_TRANSFER}

    transfer = data["transfer"]
    by_id = {r["id"]: r for r in transfer["rows"]}
    # the shallow trick: the best at depth 2, worse than the baseline at depth 4
    assert (
        by_id[shallow]["search_delta"] < by_id[good]["search_delta"] < 0 < by_id[shallow]["validation_delta"]
    )
    assert by_id[good]["validation_gain_floors"] > 2 and transfer["noise_floor"]["validation"] > 0
    assert transfer["spearman"] == pytest.approx(-1.0)  # two candidates, ranked the other way round
    assert data["champion"]["id"] == good and data["champion"]["validated"] is True

    again = runner.invoke(main, args[:-1] + ["--seeds", "2"])  # nothing to do: the table only
    assert again.exit_code == 0, again.output
    assert "0 runs now (0 not ok), 6 already in the store" in again.output
    assert "does not transfer" in again.output and "Spearman rank correlation -1.000 over 2" in again.output
    assert f"champion: {good} (transfers to depth 4)" in again.output
    assert len(_validation_rows(root)) == 6
    assert _worktrees(root) == [str(root)]  # its worktrees are gone

    status = runner.invoke(main, ["status", *w, "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["champion"]["id"] == good and shown["transfer"]["validation_depth"] == 4
    screen = runner.invoke(main, ["status", *w])
    assert "transfer of run v: depth 2 -> 4" in screen.output and f"champion: {good}" in screen.output

    df = analysis.lineage(root).set_index("id")
    assert df.loc[good, "verdict"] == "transfers" and df.loc[shallow, "verdict"] == "does not transfer"
    assert df.loc[good, "validation_bpb_n"] == 2 and df.loc[good, "validation_depth"] == 4

    exported = runner.invoke(main, ["export", "champion", "--branch", "next", *w])
    assert exported.exit_code == 0, exported.output
    good_commit = open_workspace(root).repo().get(good).commit
    shown = git_process(root, "show", "next:train.py").stdout
    assert shown == git_process(root, "show", f"{good_commit}:train.py").stdout

    other = runner.invoke(main, [*args, "--seeds", "2", "--budget", "81920"])
    assert other.exit_code == 1 and other.output.count("\n") == 1 and "pass --budget 61440" in other.output
    same = runner.invoke(main, [*args, "--depth", "2"])
    assert same.exit_code == 1 and "is the search depth" in same.output


def test_several_devices_per_run_go_through_torchrun(searched, tmp_path, use_tiny_data):
    root, good, shallow = _copy(searched, tmp_path)
    ws = open_workspace(root)
    result = validate(
        ws, ValidationSpec(depth=3, top=1, seeds=1, budget=61440, gpus_per_run=2), ("cpu", "cpu")
    )
    rows = _validation_rows(root)
    why = [(e.individual, e.status, e.reason, e.error_tail[-500:]) for e in rows if not e.ok]
    assert result.candidates == (shallow,) and (result.ran, result.failed) == (2, 0), why
    assert {e.individual for e in rows} == {"g0000", shallow}
    assert all(e.ok and e.device == "cpu,cpu" and e.depth == 3 for e in rows)
    log = subprocess.run(["zcat", rows[0].log_path], capture_output=True, text=True).stdout
    assert "torch.distributed.run" in log.splitlines()[0]
    runner = CliRunner()
    too_many = runner.invoke(main, ["validate", "-w", str(root), "--gpus", "cpu:1", "--gpus-per-run", "2"])
    assert too_many.exit_code == 1 and "--gpus-per-run 2 needs that many devices" in too_many.output


def test_validation_beside_a_live_evolve_run_shares_the_store_safely(searched, tmp_path, tiny_data):
    root, good, shallow = _copy(searched, tmp_path)
    env = controller_env(tmp_path / "home", tiny_data)
    cmd = evolve_command(
        "run", "-w", str(root), "--gpus", "cpu:1", "--max-experiments", "4", "--interval", "2"
    )
    db = root / ".evolve" / "evolve.db"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the run has started its session
            with Store(db, readonly=True) as store:
                with store.transaction() as conn:
                    if conn.execute("SELECT 1 FROM sessions WHERE id = 2").fetchone():
                        break
            time.sleep(0.5)
        validator = subprocess.run(
            [cmd[0], "validate", "-w", str(root), "--depth", "4", "--top", "1", "--seeds", "2",
             "--budget", "61440", "--gpus", "cpu:1", "--json"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert validator.returncode == 0, validator.stderr[-3000:]
    assert proc.returncode == 0, out[-3000:]
    data = json.loads(validator.stdout)
    (picked,) = data["candidates"]  # the best at depth 2 when it started (the search goes on)
    assert data["ran"] == 4

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (started, ended, reason) = conn.execute(
        "SELECT started, ended, stop_reason FROM sessions WHERE id = 2"
    ).fetchone()
    conn.close()
    assert reason == "done"
    with Store(db, readonly=True) as store:
        rows = [e for e in store.evaluations(run="v") if e.purpose == Purpose.VALIDATION]
        assert sorted((e.individual, e.seed) for e in rows) == sorted(
            (i, s) for i in ("g0000", picked) for s in (42, 43)
        )
        assert any(started < e.created < ended for e in rows)  # they ran while the search did
        children = [i for i in store.individuals("v") if i.parents and i.status != Status.REJECTED]
        assert len(children) == 4 and all(i.status.is_finished() and i.decision for i in children)
        assert [v.individual for v in stored_verdicts(store, "v")] == [picked]
    assert _worktrees(root) == [str(root)]  # both processes removed their worktrees


def test_validate_every_runs_inside_evolve_run_on_a_device_set_aside(searched, tmp_path, tiny_data):
    root, good, shallow = _copy(searched, tmp_path)
    with open(root / SETTINGS_FILE, "a") as f:
        f.write("\n[validate]\ntop = 1\nseeds = 1\nbudget = 61440\n")
    run_git(root, "commit", "-q", "-m", "validate settings", "--", SETTINGS_FILE, env=MACHINE_IDENTITY)
    env = controller_env(tmp_path / "home", tiny_data)
    (evolve,) = evolve_command()
    alone = subprocess.run([evolve, "run", "-w", str(root), "--gpus", "cpu:1", "--validate-every", "1"],
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert alone.returncode == 1 and "needs at least 2" in alone.stderr
    # every 2 seconds, on the second CPU slot; the search keeps the first
    cmd = [evolve, "run", "-w", str(root), "--gpus", "cpu:2", "--max-experiments", "4", "--validate-every",
           str(2 / 3600), "--interval", "5"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with Store(root / ".evolve" / "evolve.db", readonly=True) as store:
        rows = store.evaluations(run="v", purpose=Purpose.VALIDATION)
        sessions = [e.payload["devices"] for e in store.events("v", kind="session_start")]
        rounds = store.events("v", kind="validation")
        search = [e for e in store.evaluations(run="v") if e.purpose != Purpose.VALIDATION]
    assert sessions[-1] == ["cpu"]  # one slot left to the search
    assert rows and all(e.ok and e.depth == 4 and e.budget == 61440.0 for e in rows)
    assert {e.individual for e in rows} <= {"g0000", *(i for r in rounds for i in r.payload["verdicts"])}
    assert ("g0000", 42) in {(e.individual, e.seed) for e in rows}
    assert len({(e.individual, e.seed) for e in rows}) == len(rows)  # later rounds did not repeat runs
    assert rounds and all(e.depth == 2 for e in search)
    assert _worktrees(root) == [str(root)]


def test_pending_and_ids_choose_what_is_validated(tmp_path):
    """A child queued for its re-evaluation seeds is no candidate unless --pending asks for it;
    a rejected one is one only when --id names it; the champion is always taken first."""
    from evolve.errors import EvolveError
    from evolve.store import Evaluation
    from evolve.validate import candidates, chosen

    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")
    store.add_individual(id="g0000", run="r", commit="c0", operator="baseline", description="baseline")
    for cid in ("kept", "waiting", "dropped"):
        store.add_individual(id=cid, run="r", commit=f"c-{cid}", parents=("g0000",), operator="optuna_tweak")
    for cid, bpb in (("g0000", 2.0), ("kept", 1.9), ("waiting", 1.8), ("dropped", 1.7)):
        store.set_status(cid, Status.QUEUED)
        store.set_status(cid, Status.RUNNING)
        store.record_evaluation(Evaluation(
            individual=cid, depth=2, budget=3.0, seed=42, profile="tiny", status="ok",
            purpose=Purpose.BASELINE if cid == "g0000" else Purpose.SEARCH, val_bpb=bpb,
            metrics={"val_bpb": bpb}, data_fingerprint="fp", device="cpu", wall_seconds=4.0,
            training_seconds=3.0, torch_version="2.13", gpu_name="", error_tail="",
        ))  # fmt: skip
        store.set_status(cid, Status.EVALUATED)
    store.set_decision("kept", "accept")
    store.set_decision("dropped", "reject")
    store.set_status("waiting", Status.QUEUED)  # a promising first seed: more seeds first
    assert [i.id for i in candidates(store, "r", 2, top=5)] == ["kept"]
    # the champion (the only accepted child) goes first, then the rest by their bound
    assert [i.id for i in candidates(store, "r", 2, top=5, pending=True)] == ["kept", "waiting"]
    assert [i.id for i in candidates(store, "r", 2, top=1, pending=True)] == ["kept"]
    # --id takes what it names, even a rejected child; never the baseline or a stranger
    spec = ValidationSpec(depth=4, ids=("dropped", "kept", "dropped"))
    assert [i.id for i in chosen(store, "r", 2, spec)] == ["dropped", "kept"]
    assert [i.id for i in chosen(store, "r", 2, ValidationSpec(depth=4, top=1))] == ["kept"]
    with pytest.raises(EvolveError, match="baseline"):
        chosen(store, "r", 2, ValidationSpec(depth=4, ids=("g0000",)))
    with pytest.raises(EvolveError, match="no individual"):
        chosen(store, "r", 2, ValidationSpec(depth=4, ids=("g9999",)))
    store.close()
