"""The engine: intake (novelty, guard), real training runs, the paired test, pairing runs, confirmation."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from run_support import BIGRAM, search_settings, settings_workspace

from evolve import confirmation as confirm
from evolve.champion import choose_champion
from evolve.engine import Engine, EngineConfig
from evolve.errors import EvolveError
from evolve.judging import Evidence
from evolve.live import event_text
from evolve.operators import Proposal
from evolve.population import from_store
from evolve.scheduler import StopConditions, StopReason, compress_log, read_log, workspace_lock
from evolve.store import Purpose, Status
from genome.settings import SETTINGS_FILE
from genome.workspace import init_workspace
from trainer import LocalExecutor

SEARCH = search_settings(baseline_seeds=3, max_seeds=3, confirm_seeds=2, migrate_every=3)
SHORT = search_settings(baseline_seeds=2, max_seeds=3, confirm_seeds=1, migrate_every=3)  # 2 baseline seeds


def workspace(tmp_path, strategy="population", search=SEARCH):
    return settings_workspace(tmp_path / "ws", search, run="t", profile="tiny", strategy=strategy, islands=2,
                              budget=81920)  # fmt: skip


def child(engine: Engine, text_from: str, old: str, new: str, description: str) -> str:
    """Commit an edited train.py as a child of `text_from` and take it in like a proposal."""
    parent = engine.repo.get(text_from)
    source = engine.repo.read(parent)
    assert old in source
    genome = engine.repo.commit_child(
        [parent], {"train.py": source.replace(old, new)}, description, "optuna_tweak"
    )
    engine._intake(Proposal(genome), island=0)
    return genome.id


@pytest.fixture
def executor():
    with LocalExecutor.cpu(2) as ex:
        yield ex


def test_duplicates_and_guard_violations_are_refused_without_training(tmp_path, use_tiny_data, executor):
    ws = workspace(tmp_path)
    engine = Engine(ws, EngineConfig.from_workspace(ws), executor)
    engine.setup()
    dup = child(engine, "g0000", "STEPS = 30", "STEPS = 30  # same code, new comment", "a comment")
    cheat = child(engine, "g0000", "cfg = prepare.run_config()",
                  "cfg = prepare.run_config()\nimport os\nSEEDED = os.environ.get('EVOLVE_SEED')", "peek")  # fmt: skip
    real = child(engine, "g0000", "STEPS = 30", "STEPS = 40", "more steps")
    again = child(engine, "g0000", "STEPS = 30", "STEPS = 40", "more steps, again")
    rows = {i: engine.store.get(i) for i in (dup, cheat, real, again)}
    assert rows[dup].status == Status.REJECTED and rows[dup].guard_reason.startswith("duplicate of g0000")
    assert rows[cheat].status == Status.REJECTED and "EVOLVE_" in rows[cheat].guard_reason
    assert rows[real].status == Status.QUEUED
    assert rows[again].status == Status.REJECTED and f"duplicate of {real}" in rows[again].guard_reason
    assert engine.experiments() == 1 and engine.queued() == 2  # the child and the baseline
    assert engine.store.evaluations() == []  # nothing was trained
    proposed = [e.payload["id"] for e in engine.store.events("t", kind="proposed")]
    assert proposed == [dup, cheat, real, again]
    engine.finish(StopReason.DONE)
    engine.close()


def test_the_paired_test_accepts_a_real_gain_confirms_it_and_rejects_losers_and_crashes(
    tmp_path, use_tiny_data, executor
):
    ws = workspace(tmp_path)
    config = EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=3))
    engine = Engine(ws, config, executor)
    engine.start()
    base = engine.store.scores(2, "t")["g0000"]
    assert base.n == 3 and engine.store.get("g0000").decision == "accept"  # baseline: 3 seeds, accepted
    better = child(engine, "g0000", "EMB_LR = 0.002", "EMB_LR = 0.05", "EMB_LR 0.002 -> 0.05")
    worse = child(engine, "g0000", "HEAD_LR = 0.002", "HEAD_LR = 0.0001", "HEAD_LR 0.002 -> 0.0001")
    crash = child(engine, "g0000", "    opt.step()\n",
                  "    opt.step()\n    raise RuntimeError('boom in training')\n", "crash")  # fmt: skip
    assert engine.scheduler.run(install_signals=False) is StopReason.DONE  # no proposals: 3 queued
    engine.finish(StopReason.DONE)
    scores = engine.store.scores(2, "t")
    # the gain was shown on paired seeds 42 and 43 (never on one seed) ...
    decision = next(e.payload for e in engine.store.events("t", kind="decision") if e.payload["id"] == better)
    assert decision["action"] == "accept" and decision["seeds"] == [42, 43] and decision["parent"] == "g0000"
    assert decision["t"] <= decision["accept_at"] and "paired on seed 42,43" in decision["reason"]
    assert engine.store.get(better).decision == "accept"
    # ... and, as the best elite, it was scored again on fresh seeds: its champion score is theirs
    evals = engine.store.evaluations(better)
    assert [(e.purpose, e.seed) for e in evals] == [
        (Purpose.SEARCH, 42), (Purpose.REEVAL, 43), (Purpose.REEVAL, 44), (Purpose.REEVAL, 45)
    ]  # fmt: skip
    row = confirm.get(engine.store, better, 2)
    assert row.status == "confirmed" and (row.first_seed, row.seeds, row.n) == (44, 2, 2)
    assert row.mean == pytest.approx((evals[2].val_bpb + evals[3].val_bpb) / 2)
    champ = choose_champion(engine.store, "t", 2)
    assert champ.id == better and champ.confirmed and champ.search_mean == pytest.approx(row.mean)
    # clearly worse: rejected after one seed
    assert scores[worse].n == 1 and scores[worse].mean > base.mean
    assert engine.store.get(worse).decision == "reject"
    # a crash is a row with its status, reason and log tail, and the run went on
    row = engine.store.get(crash)
    (ev,) = engine.store.evaluations(crash)
    assert row.status == Status.FAILED and row.decision == "reject"
    assert ev.status == "crash" and "boom in training" in ev.error_tail
    assert ev.log_path.endswith(".gz") and "boom in training" in read_log(ev.log_path)
    # the session recorded device time for every run (3 baseline + 2 + 2 fresh + 1 + 1)
    with engine.store.transaction() as conn:
        (n, training, held) = conn.execute(
            "SELECT evaluations, training_seconds, held_seconds FROM sessions"
        ).fetchone()
    assert n == 9 and 0 < training < held
    decisions = [e.payload["id"] for e in engine.store.events("t", kind="decision")]
    assert sorted(decisions) == sorted(["g0000", better, worse, crash])
    lines = [event_text(e.kind, e.payload) for e in engine.store.events("t")]
    assert any(line and line.startswith(f"{better} confirm: best elite by its bound") for line in lines)
    assert any(line and line.startswith(f"{better} confirmed: mean") for line in lines)
    engine.close()


class Scripted:
    """A `runner=` for LocalExecutor that scores a worktree's train.py without training it:
    val_bpb = 1 + NOISE[seed] + (the effect of its EMB_LR). The paired test's lines are only
    reachable in a planned way with planned scores, which real training cannot give; everything
    else (store, git, queue, scheduler, promotion) is the real engine."""

    NOISE = {42: 0.0, 43: 0.01, 44: -0.01, 45: 0.005, 46: -0.005, 47: 0.0}

    def __init__(self, effects: dict[float, float]) -> None:
        self.effects = effects
        self.runs: list[tuple[float, int]] = []

    def __call__(self, worktree, *, depth, budget, seed, devices, profile=None, script="train.py", **_):
        from genome.hyperparams import parse_hyperparams
        from trainer import RunResult
        from trainer import Status as RunStatus

        lr = parse_hyperparams((Path(worktree) / script).read_text())["EMB_LR"].value
        self.runs.append((lr, seed))
        value = 1.0 + self.NOISE[seed] + self.effects.get(lr, 0.0)
        return RunResult(
            status=RunStatus.OK, reason="", metrics={"val_bpb": value, "training_seconds": 0.01, "depth": depth},
            wall_seconds=0.01, log_path=None, error_tail="", returncode=0, depth=depth, budget=budget, seed=seed,
            profile=getattr(profile, "name", profile) or "", devices=tuple(devices), data_fingerprint="",
            torch_version="", gpu_name="", commit=None, budget_unit=getattr(profile, "budget_unit", "seconds"),
        )  # fmt: skip


def test_a_child_waits_for_its_parents_run_on_a_seed_only_the_child_has_and_survives_a_resume(
    tmp_path, use_tiny_data
):
    ws = workspace(tmp_path, search=SHORT)
    scripted = Scripted({0.05: -0.02})  # the child: 0.02 better on every seed, 2 tau with 2 baseline seeds
    config = EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=1))
    seen: list[str] = []
    with LocalExecutor(("cpu",), runner=scripted) as ex:
        engine = Engine(ws, config, ex, on_event=lambda kind, p: seen.append(kind))
        engine.start()
        kid = child(engine, "g0000", "EMB_LR = 0.002", "EMB_LR = 0.05", "EMB_LR 0.002 -> 0.05")
        # stop as soon as the child asks its parent for a seed: the request must outlive the session
        engine.on_event = lambda kind, p: (
            engine.scheduler.request_stop(StopReason.INTERRUPTED) if kind == "pair" else None
        )
        engine.scheduler.run(install_signals=False)
        engine.finish(StopReason.INTERRUPTED)
        waiting = engine.store.get(kid)
        assert waiting.decision is None and engine.store.get("g0000").status == Status.QUEUED
        (pair,) = engine.store.events("t", kind="pair")
        assert pair.payload == {
            "id": "g0000",
            "child": kid,
            "seeds": [44],
            "reason": "waits for its parent's run on seed 44",
        }
        engine.close()

        again = Engine(ws, config, ex)
        assert again.run(install_signals=False) is StopReason.DONE
    # the parent ran seed 44 once, after the child had; the child was then judged on three pairs
    assert scripted.runs.count((0.002, 44)) == 1
    assert scripted.runs.index((0.05, 44)) < scripted.runs.index((0.002, 44))
    base_runs = [(e.purpose, e.seed) for e in again.store.evaluations("g0000")]
    assert base_runs == [(Purpose.BASELINE, 42), (Purpose.BASELINE, 43), (Purpose.BASELINE, 44)]
    (decision,) = [e.payload for e in again.store.events("t", kind="decision") if e.payload["id"] == kid]
    assert decision["seeds"] == [42, 43, 44] and decision["diff"] == pytest.approx(-0.02)
    # the store tells the same story a fresh judge would
    ev = Evidence(again.store, "t", 2)
    assert ev.judge(kid, again.policy).decision.action.value == decision["action"]
    again.close()


def test_ratchet_runs_to_completion_as_one_chain(tmp_path, use_tiny_data):
    ws = workspace(tmp_path, strategy="ratchet")
    config = EngineConfig.from_workspace(ws, baseline_seeds=2, stop=StopConditions(max_experiments=3))
    with LocalExecutor.cpu(1) as ex:
        engine = Engine(ws, config, ex)
        assert engine.run(install_signals=False) is StopReason.DONE
    children = [i for i in engine.store.individuals("t") if i.parents]
    trained = [c for c in children if c.status != Status.REJECTED]
    assert len(trained) == 3 and all(c.decision in ("accept", "reject") for c in trained)
    # one chain: no crossover, and every child's parent was kept when the child was made
    assert all(len(c.parents) == 1 and c.operator == "optuna_tweak" for c in children)
    kept = {"g0000"} | {c.id for c in trained if c.decision == "accept"}
    assert all(c.parents[0] in kept for c in children)
    chain = from_store(engine.store, "t", 2, "ratchet")
    assert chain.best().id in kept and chain.best().id == engine.strategy.best().id  # a resume rebuilds it
    newest = [c for c in trained if c.decision == "accept"]
    if newest:  # the chain moves on to a child found better than the current one
        assert chain.best().id != "g0000"
    assert engine.store.in_flight("t") == [] and engine.store.individuals("t", status=Status.QUEUED) == []
    engine.close()


def test_settings_come_from_evolve_toml_and_flags_override_them(tmp_path, use_tiny_data, executor):
    ws = workspace(tmp_path)
    config = EngineConfig.from_workspace(ws, islands=3, max_seeds=None, alpha=0.01)
    assert (config.islands, config.max_seeds, config.baseline_seeds, config.budget) == (3, 3, 3, 81920.0)
    assert config.alpha == 0.01 and config.confirm_seeds == 2
    assert config.operators == ("optuna_tweak", "merge_crossover")
    assert config.operator_options["optuna_tweak"]["max_changes"] == 1
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write("\n[search.extra]\nx = 1\n")
    with pytest.raises(EvolveError, match="unknown key"):
        EngineConfig.from_workspace(ws)
    with pytest.raises(EvolveError, match="alpha must be in"):
        EngineConfig.from_workspace(workspace(tmp_path / "other"), alpha=0.7)


def test_a_run_refuses_to_resume_with_settings_its_scores_cannot_be_compared_under(
    tmp_path, use_tiny_data, executor
):
    ws = workspace(tmp_path)
    Engine(ws, EngineConfig.from_workspace(ws), executor).setup()
    other = Engine(ws, EngineConfig.from_workspace(ws, budget=5.0), executor)
    with pytest.raises(EvolveError, match="budget 81920.0 -> 5.0"):
        other.setup()


def test_one_run_per_workspace_and_logs_stay_bounded(tmp_path):
    with workspace_lock(tmp_path / ".evolve"):
        with pytest.raises(EvolveError, match="another `evolve run`"):
            with workspace_lock(tmp_path / ".evolve"):
                pass
    with workspace_lock(tmp_path / ".evolve"):  # released: free again
        pass
    log = tmp_path / "run.log"
    log.write_bytes(b"first line\n" + b"x" * (3 * 2**20) + b"\nlast line\n")
    packed = compress_log(str(log))
    assert packed.endswith(".gz") and not log.exists()
    text = read_log(packed)
    assert text.startswith("first line") and text.endswith("last line\n") and "bytes trimmed" in text
    assert Path(packed).stat().st_size < 100_000 and len(gzip.decompress(Path(packed).read_bytes())) < 2**20


def _scored_baseline(ws, **fields) -> None:
    """The run's baseline scored once, as a session before this one recorded it."""
    from evolve.store import Evaluation, Store

    with Store(ws.state_dir / "evolve.db") as store:
        store.add_run(ws.run, strategy="population", profile=fields["profile"])
        base = ws.repo().ensure_baseline()
        store.add_individual(id=base.id, run=ws.run, commit=base.commit, operator="baseline")
        store.record_evaluation(Evaluation(individual=base.id, seed=42, status="ok", val_bpb=3.0,
                                           purpose=Purpose.BASELINE, **fields))  # fmt: skip


def test_resuming_under_another_budget_is_refused_in_one_line_naming_both_keys(tmp_path, use_tiny_data):
    from click.testing import CliRunner

    from evolve.cli import main

    ws = workspace(tmp_path)
    _scored_baseline(ws, depth=2, budget=81920, budget_unit="tokens", profile="tiny", gpu_name="cpu")
    out = CliRunner().invoke(main, ["run", "-w", str(ws.root), "--gpus", "cpu:1", "--budget", "40960"])
    assert out.exit_code == 1, out.output
    (line,) = [x for x in out.output.splitlines() if x.startswith("error:")]  # one line
    assert (
        "scored at depth 2, 81,920 training tokens" in line and "at depth 2, 40,960 training tokens" in line
    )
    assert "evolve init" in line and "--run NEWNAME" in line


def test_a_time_budget_run_is_not_resumed_on_another_device_model(tmp_path, use_tiny_data):
    from trainer.runner import cpu_name

    ws = init_workspace(tmp_path / "ws", run="t", profile="h100", budget=30, train_py=BIGRAM)
    _scored_baseline(ws, depth=12, budget=30, budget_unit="seconds", profile="h100", gpu_name="NVIDIA H200")
    with LocalExecutor.cpu(1) as ex:
        engine = Engine(ws, EngineConfig.from_workspace(ws), ex)
        with pytest.raises(
            EvolveError, match=rf"scored at depth 12, 30 s on NVIDIA H200, .* on {cpu_name()}"
        ):
            engine.setup()


class OnTwoModels(Scripted):
    """Scripted under a time budget, on a cluster of two GPU models: the runs numbered in
    `elsewhere` (the first is 1) and the runs of the seeds in `seeds_elsewhere` come back from an
    A100, all others from an H200."""

    def __init__(self, effects: dict[float, float], elsewhere=(), seeds_elsewhere=()) -> None:
        super().__init__(effects)
        self.elsewhere, self.seeds_elsewhere = elsewhere, seeds_elsewhere
        self.calls: list[tuple[int, str]] = []  # (seed, gpu) of each run, in order

    def __call__(self, worktree, **kw):
        from dataclasses import replace

        result = super().__call__(worktree, **kw)
        away = len(self.runs) in self.elsewhere or kw["seed"] in self.seeds_elsewhere
        gpu = "NVIDIA A100" if away else "NVIDIA H200"
        self.calls.append((kw["seed"], gpu))
        return replace(result, gpu_name=gpu)


def _timed_workspace(tmp_path):
    """A time-budget run (h100: depth 12, 30 s) with 2 baseline seeds."""
    ws = settings_workspace(tmp_path / "ws", SHORT, run="t", profile="h100", budget=30)
    return ws, EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=1))


def _timed_run(tmp_path, runner: OnTwoModels) -> tuple[Engine, str]:
    """A time-budget run whose baseline (2 seeds) is scored, with one child queued."""
    ws, config = _timed_workspace(tmp_path)
    engine = Engine(ws, config, LocalExecutor(("cpu",), runner=runner))
    engine.start()
    kid = child(engine, "g0000", "EMB_LR = 0.002", "EMB_LR = 0.05", "EMB_LR 0.002 -> 0.05")
    return engine, kid


H200_KEY, A100_KEY = "depth 12, 30 s on NVIDIA H200", "depth 12, 30 s on NVIDIA A100"


def test_a_run_back_from_another_device_model_is_set_aside_and_run_again_on_its_seed(tmp_path, use_tiny_data):
    runner = OnTwoModels({0.05: -0.02}, elsewhere={3, 4})  # the child's first two runs land on an A100
    engine, kid = _timed_run(tmp_path, runner)
    try:
        assert engine.scheduler.run(install_signals=False) is StopReason.DONE
        engine.finish(StopReason.DONE)
        assert runner.calls[:5] == [(42, "NVIDIA H200"), (43, "NVIDIA H200"), (42, "NVIDIA A100"),
                                    (42, "NVIDIA A100"), (42, "NVIDIA H200")]  # fmt: skip
        asides = [e.payload for e in engine.store.events("t", kind="aside")]
        assert [(a["id"], a["seed"], a["purpose"]) for a in asides] == [(kid, 42, "search")] * 2
        assert all(a["key"] == A100_KEY and a["run_key"] == H200_KEY for a in asides)
        assert all(A100_KEY in a["reason"] and H200_KEY in a["reason"] for a in asides)
        # nothing of the A100 runs was recorded; the child was scored on the H200 and judged
        evals = engine.store.evaluations(run="t")
        assert evals and {e.gpu_name for e in evals} == {"NVIDIA H200"}
        mine = [e for e in evals if e.individual == kid]
        assert mine[0].seed == 42 and mine[0].ok and len({e.seed for e in mine}) == len(mine)
        assert engine.store.set_aside(12, "t") == {}
        (decision,) = [e.payload for e in engine.store.events("t", kind="decision") if e.payload["id"] == kid]
        assert decision["seeds"] == [42, 43, 44] and decision["diff"] == pytest.approx(-0.02)
        assert str(engine.store.score_key(12, "t")) == H200_KEY
    finally:
        engine.executor.shutdown()
        engine.close()


def test_too_many_runs_in_a_row_on_another_model_stop_the_run_naming_both_keys(tmp_path, use_tiny_data):
    runner = OnTwoModels({}, elsewhere=range(3, 100))  # after the baseline, every run lands on an A100
    engine, kid = _timed_run(tmp_path, runner)
    try:
        with pytest.raises(EvolveError) as caught:
            engine.scheduler.run(install_signals=False)
        engine.finish(StopReason.ERROR)
        message = str(caught.value)
        assert "\n" not in message and message.startswith("4 runs in a row came back at")
        assert A100_KEY in message and H200_KEY in message and "--accelerator-type" in message
        assert runner.calls[2:] == [(42, "NVIDIA A100")] * 4  # one slot: max(3, 1) are let through
        assert len(engine.store.events("t", kind="aside")) == 4
        assert engine.store.evaluations(kid) == []
        ind = engine.store.get(kid)
        assert ind.status == Status.QUEUED and ind.decision is None  # a resume runs it again
    finally:
        engine.executor.shutdown()
        engine.close()


def test_a_baseline_set_aside_on_many_slots_stops_for_its_key_not_as_a_failing_baseline(
    tmp_path, use_tiny_data
):
    runner = OnTwoModels({}, seeds_elsewhere={43})  # the baseline's second seed always lands on an A100
    ws, config = _timed_workspace(tmp_path)
    with LocalExecutor(("cpu",) * 5, runner=runner) as ex:  # 5 slots: 6 set aside in a row stop the run
        engine = Engine(ws, config, ex)
        with pytest.raises(EvolveError) as caught:
            engine.start()
    message = str(caught.value)
    assert message.startswith("6 runs in a row came back at") and A100_KEY in message and H200_KEY in message
    assert engine.store.events("t", kind="reference_run") == []  # a baseline set aside has not failed
    assert [(e.seed, e.gpu_name) for e in engine.store.evaluations("g0000")] == [(42, "NVIDIA H200")]
    engine.close()
