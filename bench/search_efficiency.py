"""Search efficiency: the population against the ratchet, with the same operators and budget.

Both strategies run the real engine (the Optuna tweak and the merge crossover, noise-aware
promotion, the store, git) for the same number of experiments (children trained); only
`--strategy` differs. The ratchet is autoresearch's chain; the merge crossover needs two parents,
so there it falls back to the tweak. Two landscapes:

- `synthetic`: a fake trainer (bench/overhead.py's `FakeTrainer`, no sleeping) scores the
  child's hyperparameter block, read from its worktree with `genome.hyperparams`, with the noisy
  function `landscape` below: fast, so many seeds per strategy. The noiseless value is known,
  so a keep can be judged exactly.
- `real`: real training on CPU: the tiny profile, the shared corpus, a fixed-step bigram train.py
  (tests/evolve/data/train_bigram.py; its score depends on code and seed only, never on the load
  of the machine), budget `--budget` seconds.

For each run, the champion after k experiments is the accepted individual with the lowest mean at
its decision (what `evolve top` shows then); its value is the noiseless landscape (synthetic) or
its measured mean (real). The target is the median over ratchet runs of the champion's value after
100 experiments; "experiments to target" is the first k at which a run's champion is at least as
good. A false keep is an accepted child that a re-run does not confirm: re-run the child and its
(best) parent with `--confirm-seeds` new seeds each; it is false when the child's mean is not
below the parent's. On the synthetic landscape the exact verdict (noiseless values) is given too.

    python bench/search_efficiency.py synthetic --seeds 10 --experiments 150 --out synth.json
    python bench/search_efficiency.py real --data DIR --seeds 2 --experiments 100 --slots 2 --out real.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from overhead import FakeTrainer, make_workspace, prepared_data  # noqa: E402

from evolve.engine import Engine, EngineConfig  # noqa: E402
from evolve.scheduler import StopConditions  # noqa: E402
from evolve.store import Store  # noqa: E402
from genome.hyperparams import parse_hyperparams  # noqa: E402
from genome.record import BASELINE_ID  # noqa: E402
from genome.repo import run_git  # noqa: E402
from genome.workspace import Workspace, open_workspace  # noqa: E402
from trainer import LocalExecutor  # noqa: E402

OPERATORS = ("optuna_tweak", "merge_crossover")
CONFIRM_SEED = 1000  # re-runs use seeds 1000, 1001, ...: never a seed the search used
NOISE = 0.01  # seed-to-seed standard deviation of the synthetic score


# --- the synthetic landscape --------------------------------------------------------------------


def true_value(k: Mapping[str, Any]) -> float:
    """The noiseless synthetic val_bpb of a hyperparameter block (lower is better).

    Over the bigram train.py's knobs, in the ranges the Optuna tweak searches from the baseline:
    log-scale bowls for the two learning rates, the head's optimum moving with the batch size
    (sqrt scaling); a shallow basin of the init scale around its start and a deeper, narrow one
    far from it; Adam's beta1 best at 0.75; capacity (width, steps, batch) helping with
    diminishing returns, and width and steps costing together beyond a point."""
    emb, head, std, beta1 = (float(k[n]) for n in ("EMB_LR", "HEAD_LR", "INIT_STD", "BETA1"))
    dim, steps, batch = (float(k[n]) for n in ("DIM", "STEPS", "BATCH_SIZE"))
    value = 3.0
    value += 0.06 * math.log2(emb / 0.005) ** 2
    value += 0.06 * math.log2(head / (0.003 * math.sqrt(batch / 8))) ** 2
    value -= 0.02 * math.exp(-(math.log(std / 0.02) ** 2) / 0.5)  # the basin it starts in
    value -= 0.06 * math.exp(-(((std - 0.3) / 0.05) ** 2))  # the better one, far away
    value += 0.4 * (beta1 - 0.75) ** 2
    value -= 0.03 * math.log2(dim / 16) + 0.04 * math.log2(steps / 15) + 0.02 * math.log2(batch / 4)
    value += 0.015 * max(0.0, math.log2(dim / 32) + math.log2(steps / 40)) ** 2
    return value


def landscape(bench_seed: int, noise: float = NOISE) -> Callable[[Mapping[str, Any], int], float]:
    """The noisy score: the true value plus Gaussian noise drawn from (bench seed, code, run seed)."""

    def score(knobs: Mapping[str, Any], seed: int) -> float:
        rng = random.Random(f"{bench_seed}:{sorted(knobs.items())}:{seed}")
        return true_value(knobs) + rng.gauss(0.0, noise)

    return score


# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """The state after the k-th child was decided."""

    experiment: int
    runs: int  # device runs so far (baseline seeds and re-evaluations included)
    champion: str
    champion_mean: float


@dataclass(frozen=True)
class Keep:
    id: str
    parent: str  # the best parent (by mean at the decision)
    operator: str
    experiment: int


@dataclass(frozen=True)
class Trace:
    strategy: str
    seed: int
    workspace: str
    experiments: int
    runs: int
    wall_s: float
    steps: tuple[Step, ...]
    keeps: tuple[Keep, ...]
    decisions: dict[str, int]  # operator -> children decided
    near_budget: int = 0  # ok runs whose training took >= 80% of the budget (the bigram stops there)


def trace(store: Store, run: str, strategy: str, seed: int, workspace: str, wall: float) -> Trace:
    """The run's timeline, from its events (decisions in order, device runs between them)."""
    accepted: dict[str, float] = {}
    steps, keeps = [], []
    k = runs = 0
    parents = {i.id: i.parents for i in store.individuals(run)}
    operators = {i.id: i.operator for i in store.individuals(run)}
    decisions: dict[str, int] = {}
    for event in store.events(run):
        if event.kind == "evaluated":
            runs += 1
        if event.kind != "decision":
            continue
        ind, mean = event.payload["id"], event.payload.get("mean")
        if ind != BASELINE_ID:
            k += 1
            decisions[operators[ind]] = decisions.get(operators[ind], 0) + 1
        if event.payload["action"] == "accept" and mean is not None:
            if ind != BASELINE_ID:
                known = [p for p in parents[ind] if p in accepted]
                best_parent = min(known, key=lambda p: accepted[p]) if known else parents[ind][0]
                keeps.append(Keep(ind, best_parent, operators[ind], k))
            accepted[ind] = float(mean)
        if ind != BASELINE_ID:
            champion = min(accepted, key=lambda i: accepted[i])
            steps.append(Step(k, runs, champion, accepted[champion]))
    near = sum(1 for e in store.evaluations(run=run) if e.ok and (e.training_seconds or 0) >= 0.8 * e.budget)
    return Trace(
        strategy, seed, workspace, k, runs, round(wall, 1), tuple(steps), tuple(keeps), decisions, near
    )


def run_search(
    workdir: Path, strategy: str, seed: int, experiments: int, *, real: bool, budget: float, slots: int,
    islands: int, fingerprint: str = "", alpha: float | None = None, penalty_k: float | None = None,
) -> Trace:  # fmt: skip
    """One evolution of `experiments` children with `strategy`; returns its trace."""
    if alpha is not None or penalty_k is not None:  # what-ifs: not settings of the engine
        import functools

        import evolve.population as population

        what_if = {k: v for k, v in (("alpha", alpha), ("penalty_k", penalty_k)) if v is not None}
        population.STRATEGIES["population"] = functools.partial(population.Population, **what_if)
    root = workdir / f"{strategy}-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    run = f"{strategy}{seed}"
    ws = make_workspace(root, run, strategy=strategy, islands=islands, budget=budget)
    config = EngineConfig.from_workspace(ws, operators=OPERATORS, seed=seed,
                                         stop=StopConditions(max_experiments=experiments))  # fmt: skip
    devices = ("cpu",) * slots
    fake = {} if real else {"runner": FakeTrainer(landscape(seed), sleep=False, fingerprint=fingerprint)}
    started = time.monotonic()
    with LocalExecutor(devices, **fake) as executor:
        engine = Engine(ws, config, executor)
        engine.run(install_signals=False)
        result = trace(engine.store, run, strategy, seed, str(ws.root), time.monotonic() - started)
        engine.close()
    return result


def _run_one(args: tuple) -> Trace:
    workdir, strategy, seed, experiments, kw = args
    return run_search(workdir, strategy, seed, experiments, **kw)


# --- judging the keeps --------------------------------------------------------------------------------


def knobs_of(ws: Workspace, individual: str) -> dict[str, Any]:
    text = ws.repo().read(ws.repo().get(individual))
    return {name: hp.value for name, hp in parse_hyperparams(text).items()}


class Confirmer:
    """Re-runs individuals with new seeds (cached), for the false-keep verdicts."""

    def __init__(
        self, ws: Workspace, seeds: int, *, real: bool, bench_seed: int, budget: float, data: Path | None
    ):
        self.ws, self.seeds, self.real, self.budget, self.data = ws, seeds, real, budget, data
        self.score = landscape(bench_seed)
        self.cache: dict[str, float] = {}
        self.runs = 0

    def mean(self, individual: str) -> float:
        if individual not in self.cache:
            seeds = [CONFIRM_SEED + i for i in range(self.seeds)]
            if self.real:
                values = self._train(individual, seeds)
            else:
                knobs = knobs_of(self.ws, individual)
                values = [self.score(knobs, s) for s in seeds]
            self.runs += len(seeds)
            ok = [v for v in values if v is not None and math.isfinite(v)]
            self.cache[individual] = statistics.fmean(ok) if ok else math.inf
        return self.cache[individual]

    def _train(self, individual: str, seeds: list[int]) -> list[float | None]:
        from trainer import run

        commit = self.ws.repo().get(individual).commit
        tree = Path(tempfile.mkdtemp(prefix="confirm-"))
        logs = Path(tempfile.mkdtemp(prefix="confirm-logs-"))
        run_git(self.ws.root, "worktree", "add", "--detach", "--force", "--quiet", str(tree / "wt"), commit)
        try:
            out = []
            for seed in seeds:
                result = run(tree / "wt", depth=self.ws.settings.depth, budget=self.budget, seed=seed,
                             devices=("cpu",), profile="tiny", data_dir=self.data, log_dir=logs)  # fmt: skip
                out.append(result.val_bpb if result.ok else None)
            return out
        finally:
            run_git(self.ws.root, "worktree", "remove", "--force", "--force", str(tree / "wt"))
            shutil.rmtree(tree, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)


@dataclass(frozen=True)
class Verdicts:
    keeps: int
    false_by_rerun: int
    false_by_truth: int | None  # synthetic only
    rerun_runs: int


def judge_keeps(t: Trace, confirm: Confirmer, truth: Callable[[str], float] | None) -> Verdicts:
    false_rerun = false_truth = 0
    for keep in t.keeps:
        if confirm.mean(keep.id) >= confirm.mean(keep.parent):
            false_rerun += 1
        if truth is not None and truth(keep.id) >= truth(keep.parent):
            false_truth += 1
    return Verdicts(len(t.keeps), false_rerun, false_truth if truth is not None else None, confirm.runs)


# --- the comparison -------------------------------------------------------------------------------------


def value_at(t: Trace, k: int, value: Callable[[Trace, str], float]) -> float | None:
    """The value of the champion once k children were decided (None before the first)."""
    last = None
    for step in t.steps:
        if step.experiment > k:
            break
        last = step
    return value(t, last.champion) if last is not None else None


def experiments_to(t: Trace, target: float, value: Callable[[Trace, str], float]) -> tuple[int, int] | None:
    """(experiments, device runs) at which the champion first reached `target`; None if never."""
    for step in t.steps:
        if value(t, step.champion) <= target + 1e-12:
            return step.experiment, step.runs
    return None


def compare(traces: list[Trace], verdicts: dict[tuple[str, int], Verdicts], value: Callable[[Trace, str], float],
            at: int = 100, target: float | None = None) -> tuple[float, list[dict]]:  # fmt: skip
    if target is None:
        ratchet = [v for t in traces if t.strategy == "ratchet" and (v := value_at(t, at, value)) is not None]
        target = statistics.median(ratchet)
    rows = []
    for strategy in sorted({t.strategy for t in traces}):
        mine = [t for t in traces if t.strategy == strategy]
        reached = [experiments_to(t, target, value) for t in mine]
        ks = sorted(r[0] if r else math.inf for r in reached)
        runs = sorted(r[1] if r else math.inf for r in reached)
        v = [verdicts[(t.strategy, t.seed)] for t in mine if (t.strategy, t.seed) in verdicts]
        rows.append({
            "strategy": strategy, "runs": len(mine), "experiments": statistics.median(t.experiments for t in mine),
            "device_runs": statistics.median(t.runs for t in mine),
            "median_experiments_to_target": statistics.median(ks), "median_runs_to_target": statistics.median(runs),
            "experiments_to_target": [k if math.isfinite(k) else None for k in ks],
            "reached_by_50": sum(k <= 50 for k in ks), "reached_by_100": sum(k <= 100 for k in ks),
            "reached_at_all": sum(math.isfinite(k) for k in ks),
            "value_at_50": statistics.median(value_at(t, 50, value) for t in mine),
            "value_at_100": statistics.median(value_at(t, 100, value) for t in mine),
            "value_at_end": statistics.median(value_at(t, t.experiments, value) for t in mine),
            "keeps": sum(x.keeps for x in v), "false_keeps_rerun": sum(x.false_by_rerun for x in v),
            "false_keeps_truth": sum(x.false_by_truth for x in v) if v and v[0].false_by_truth is not None else None,
            "wall_s_median": statistics.median(t.wall_s for t in mine),
            "runs_near_budget": sum(t.near_budget for t in mine),
        })  # fmt: skip
    return target, rows


def markdown(target: float, rows: list[dict], synthetic: bool) -> str:
    fmt = lambda k: "never" if k is None or not math.isfinite(k) else f"{k:g}"
    head = ("| strategy | runs | experiments (device runs) | experiments to target, median | device runs to target |"
            " reached by 50 / 100 / at all | champion at 50 / 100 / end | keeps | false keeps (re-run) |"
            + (" false keeps (truth) |" if synthetic else ""))  # fmt: skip
    lines = [f"Target (the ratchet's median champion after 100 experiments, or --target): {target:.4f}", "", head,
             "|---" * (9 + synthetic) + "|"]  # fmt: skip
    for r in rows:
        false_truth = (
            f" {r['false_keeps_truth']} ({r['false_keeps_truth'] / max(1, r['keeps']):.0%}) |"
            if synthetic
            else ""
        )
        lines.append(
            f"| {r['strategy']} | {r['runs']} | {r['experiments']:g} ({r['device_runs']:g}) | "
            f"{fmt(r['median_experiments_to_target'])} ({', '.join(fmt(k) for k in r['experiments_to_target'])}) | "
            f"{fmt(r['median_runs_to_target'])} | {r['reached_by_50']} / {r['reached_by_100']} / {r['reached_at_all']} | "
            f"{r['value_at_50']:.4f} / {r['value_at_100']:.4f} / {r['value_at_end']:.4f} | {r['keeps']} | "
            f"{r['false_keeps_rerun']} ({r['false_keeps_rerun'] / max(1, r['keeps']):.0%}) |{false_truth}"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("landscape", choices=["synthetic", "real"])
    ap.add_argument("--seeds", type=int, default=10, help="runs per strategy (search seeds 0..N-1)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--experiments", type=int, default=150, help="children trained per run (>= 100)")
    ap.add_argument("--strategies", default="ratchet,population")
    ap.add_argument("--islands", type=int, default=4, help="islands of the population")
    ap.add_argument("--alpha", type=float, help="what-if: the population's rank exponent (engine: 1)")
    ap.add_argument("--penalty-k", type=float, help="what-if: the population's child penalty k (engine: 4)")
    ap.add_argument("--budget", type=float, default=5.0, help="training seconds per run (real)")
    ap.add_argument("--slots", type=int, default=1, help="CPU devices per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (synthetic)")
    ap.add_argument("--target", type=float, help="the value to reach (default: the ratchet runs' at 100)")
    ap.add_argument("--confirm-seeds", type=int, default=2, help="re-runs per kept child and parent")
    ap.add_argument("--data", type=Path, help="prepared tiny dataset (real: the shared corpus)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    real = args.landscape == "real"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"evolve-efficiency-{args.landscape}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.data:
        os.environ["EVOLVE_DATA"] = str(args.data)
    elif real:
        ap.error("real needs --data: a tiny dataset prepared from the shared corpus")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data, fingerprint = prepared_data(workdir)
    kw = dict(real=real, budget=args.budget, slots=args.slots, islands=args.islands, fingerprint=fingerprint,
              alpha=args.alpha, penalty_k=args.penalty_k)  # fmt: skip
    jobs = [(workdir, s, seed, args.experiments, kw) for seed in range(args.first_seed, args.first_seed + args.seeds)
            for s in args.strategies.split(",")]  # fmt: skip
    started = time.time()
    traces: list[Trace] = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for t in pool.map(_run_one, jobs):
                print(f"[efficiency] {t.strategy} seed {t.seed}: {t.experiments} experiments, {t.runs} runs, "
                      f"{t.near_budget} near the budget, {t.wall_s:.0f} s", flush=True)  # fmt: skip
                traces.append(t)
    else:
        for job in jobs:
            t = _run_one(job)
            print(f"[efficiency] {t.strategy} seed {t.seed}: {t.experiments} experiments, {t.runs} runs, "
                  f"{t.near_budget} near the budget, {t.wall_s:.0f} s", flush=True)  # fmt: skip
            traces.append(t)
    verdicts: dict[tuple[str, int], Verdicts] = {}
    truths: dict[tuple[str, str], float] = {}
    for t in traces:
        ws = open_workspace(t.workspace)
        confirm = Confirmer(
            ws, args.confirm_seeds, real=real, bench_seed=t.seed, budget=args.budget, data=data
        )
        truth = None if real else (lambda i, ws=ws: true_value(knobs_of(ws, i)))
        verdicts[(t.strategy, t.seed)] = judge_keeps(t, confirm, truth)
        if not real:
            for step in t.steps:
                truths.setdefault((t.workspace, step.champion), true_value(knobs_of(ws, step.champion)))
        print(f"[efficiency] {t.strategy} seed {t.seed}: {verdicts[(t.strategy, t.seed)]}", flush=True)
    if real:
        value = lambda t, i: next(s.champion_mean for s in t.steps if s.champion == i)
    else:
        value = lambda t, i: truths[(t.workspace, i)]
    target, rows = compare(traces, verdicts, value, target=args.target)
    table = markdown(target, rows, synthetic=not real)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "landscape": args.landscape, "argv": sys.argv[1:], "wall_s": round(time.time() - started),
            "target": target, "rows": rows, "table": table,
            "verdicts": {f"{s}-{seed}": asdict(v) for (s, seed), v in verdicts.items()},
            "traces": [asdict(t) for t in traces],
        }, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
