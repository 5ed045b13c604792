"""Controller overhead per child and device duty cycle, measured with a fake trainer.

The one place a fake trainer is right: to see the controller's own cost, the training must cost
nothing we did not ask for. `FakeTrainer` is a `runner=` for `LocalExecutor` that reads the
child's hyperparameter block from its worktree, sleeps the budget (or not at all) and returns a
synthetic `RunResult` (status ok, val_bpb from a scoring function of the knobs and the seed,
training_seconds = the budget). Everything else is the real engine: the Optuna tweak and the merge
crossover commit real children in git, the novelty check and the static guard read them, the
SQLite store records every proposal, run and decision, the worktree pool checks each child out.

Measured per configuration (N fake devices, budget B seconds), as the median of `--repeats` runs:

- controller seconds per child, split into proposal (the operator: Optuna ask + commit, or a
  merge), novelty (code hash), guard (static checks), store (the proposal's row), and per device
  run: claim, worktree checkout (git), record (store + promotion);
- device gap: seconds a device waits between the end of one run and the start of the next;
- duty cycle: training seconds / device-held seconds over the steady state (from the first
  child's start to the last child's start), and the engine's own figure for the whole session
  (start-up, the baseline's seeds and the wind-down included).

    python bench/overhead.py --slots 1,4,8 --budgets 1,2 --repeats 3 --out overhead.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout too, not only when installed

import evolve.novelty as novelty_module  # noqa: E402
import genome.guard as guard_module  # noqa: E402
from evolve.engine import Engine, EngineConfig  # noqa: E402
from evolve.scheduler import StopConditions, session_rows  # noqa: E402
from genome.hyperparams import parse_hyperparams  # noqa: E402
from genome.settings import SETTINGS_FILE  # noqa: E402
from genome.workspace import Workspace, init_workspace  # noqa: E402
from trainer import LocalExecutor, RunResult, Status  # noqa: E402

BIGRAM = REPO / "tests" / "evolve" / "data" / "train_bigram.py"
OPERATORS = ("optuna_tweak", "merge_crossover")
KNOBS = ("EMB_LR", "HEAD_LR", "INIT_STD", "BETA1", "DIM", "STEPS", "BATCH_SIZE")
SEARCH = """
[operators.optuna_tweak]
include = [{knobs}]
max_changes = 2
"""

Score = Callable[[Mapping[str, Any], int], float]  # (knobs, seed) -> val_bpb


def bowl(knobs: Mapping[str, Any], seed: int, noise: float = 0.01) -> float:
    """A plain default landscape: a log-scale bowl around learning rates 0.006, plus seed noise."""
    value = 2.0 + sum(0.05 * math.log2(float(knobs[k]) / 0.006) ** 2 for k in ("EMB_LR", "HEAD_LR"))
    return value + random.Random(f"{sorted(knobs.items())}:{seed}").gauss(0.0, noise)


class FakeTrainer:
    """A `runner=` for LocalExecutor: no training, a synthetic score, the budget slept (or not).

    Records (start, end, device) of every run, so the bench can compute the duty cycle itself."""

    def __init__(self, score: Score = bowl, sleep: bool = True, fingerprint: str = "") -> None:
        self.score = score
        self.sleep = sleep
        self.fingerprint = fingerprint
        self.runs: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, worktree: Path, *, depth: int, budget: float, seed: int, devices: tuple[str, ...],
                 profile: Any = None, script: str = "train.py", **_: Any) -> RunResult:  # fmt: skip
        start = time.monotonic()
        knobs = {k: hp.value for k, hp in parse_hyperparams((Path(worktree) / script).read_text()).items()}
        value = self.score(knobs, seed)
        if self.sleep:
            time.sleep(max(0.0, budget - (time.monotonic() - start)))
        end = time.monotonic()
        with self._lock:
            self.runs.append((start, end, ",".join(devices)))
        ok = math.isfinite(value)
        return RunResult(
            status=Status.OK if ok else Status.DIVERGED, reason="" if ok else "fake: non-finite score",
            metrics={"val_bpb": value, "training_seconds": budget if self.sleep else 0.0, "depth": depth} if ok else {},
            wall_seconds=end - start, log_path=None, error_tail="", returncode=0, depth=depth, budget=budget,
            seed=seed, profile=getattr(profile, "name", profile) or "", devices=tuple(devices),
            data_fingerprint=self.fingerprint, torch_version="", gpu_name="fake", commit=None,
        )  # fmt: skip


def prepared_data(workdir: Path) -> tuple[Path, str]:
    """The tiny builtin dataset (the engine wants a prepared one; the fake trainer never reads it)."""
    from prepare.pipeline import prepare_dataset
    from prepare.profiles import get_profile

    if os.environ.get("EVOLVE_DATA"):
        import prepare

        path = Path(os.environ["EVOLVE_DATA"])
        return path, prepare.load_manifest(path).fingerprint
    os.environ["EVOLVE_HOME"] = str(workdir / "home")
    manifest = prepare_dataset(get_profile("tiny"), source="builtin")
    os.environ["EVOLVE_DATA"] = str(manifest.path)
    return manifest.path, manifest.fingerprint


def make_workspace(root: Path, run: str, *, strategy: str = "population", islands: int = 4,
                   budget: float = 1.0, knobs: tuple[str, ...] = KNOBS) -> Workspace:  # fmt: skip
    ws = init_workspace(root, run=run, profile="tiny", strategy=strategy, islands=islands, budget=budget,
                        train_py=BIGRAM)  # fmt: skip
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write(SEARCH.format(knobs=", ".join(f'"{k}"' for k in knobs)))
    return ws


class Timers:
    """Wall seconds spent in named parts of the controller, summed per part (thread-safe)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - start
                    self.calls[name] += 1

        return timed


def instrument(engine: Engine, timers: Timers) -> Callable[[], None]:
    """Time the engine's parts; returns a function that undoes the module-level patch."""
    engine._intake = timers.wrap("intake", engine._intake)
    engine.claim = timers.wrap("claim", engine.claim)
    engine._record = timers.wrap("record", engine._record)
    engine.propose = timers.wrap("propose", engine.propose)
    # The intake rule (evolve.novelty.admit) looks both up in their modules at each call.
    original_hash, original_check = novelty_module.code_hash, guard_module.check
    novelty_module.code_hash = timers.wrap("novelty", original_hash)
    guard_module.check = timers.wrap("guard", original_check)
    original_setup = engine.setup

    def setup() -> None:  # operators and the pool exist only after setup
        original_setup()
        for name, op in engine.operators.items():
            op.propose = timers.wrap(f"op:{name}", op.propose)
        assert engine.pool is not None
        engine.pool.checkout = timers.wrap("checkout", engine.pool.checkout)

    engine.setup = setup

    def undo() -> None:
        novelty_module.code_hash, guard_module.check = original_hash, original_check

    return undo


@dataclass(frozen=True)
class Measure:
    slots: int
    budget: float
    children: int  # trained children
    proposals: int  # proposals made (queued, refused or failed)
    runs: int  # device runs (baseline seeds and re-evaluations included)
    propose_s: float  # controller seconds per proposal (operator + novelty + guard + store)
    operator_s: float  # ... of which the operator
    novelty_s: float
    guard_s: float
    store_s: float  # the proposal's row (intake minus novelty and guard)
    device_side_s: float  # per device run: claim + checkout + record
    checkout_s: float
    record_s: float
    per_child_s: float  # all controller seconds / trained children
    cpu_per_child_s: float  # CPU seconds of this process and its git subprocesses / trained children
    gap_s: float  # median seconds a device waited between two runs (steady state)
    duty: float  # training / held seconds, steady state
    session_duty: float  # the engine's figure for the whole session
    wall_s: float


def _steady_duty(runs: list[tuple[float, float, str]], slots: int, first_child: float) -> tuple[float, float]:
    """(duty cycle, median gap) over [first child's start, last run's start]."""
    runs = sorted(runs)
    t0, t1 = first_child, max(start for start, _, _ in runs)
    if t1 <= t0:
        return float("nan"), float("nan")
    busy = sum(max(0.0, min(end, t1) - max(start, t0)) for start, end, _ in runs)
    # A device's gap: from the end of a run to the next start on a free slot (slots look alike,
    # so each start takes the latest end before it that no other start took).
    gaps, free = [], []
    for start, end, _ in runs:
        if start < t0:
            continue
        before = [e for e in free if e <= start]
        if before:
            free.remove(max(before))
            gaps.append(start - max(before))
        free.append(end)
    return busy / ((t1 - t0) * slots), statistics.median(gaps) if gaps else 0.0


def measure(
    workdir: Path, slots: int, budget: float, children: int, fingerprint: str, seed: int = 0
) -> Measure:
    ws = make_workspace(workdir / f"ws-{slots}-{budget:g}-{seed}", "overhead", budget=budget)
    fake = FakeTrainer(fingerprint=fingerprint)
    config = EngineConfig.from_workspace(ws, operators=OPERATORS, seed=seed,
                                         stop=StopConditions(max_experiments=children))  # fmt: skip
    timers = Timers()
    first_child: list[float] = []

    def on_event(kind: str, payload: dict) -> None:
        if kind == "decision" and payload.get("id") == "g0000" and not first_child:
            first_child.append(time.monotonic())

    started = time.monotonic()
    cpu0 = _cpu()
    with LocalExecutor(("cpu",) * slots, runner=fake) as executor:
        engine = Engine(ws, config, executor, on_event=on_event)
        undo = instrument(engine, timers)
        try:
            engine.run(install_signals=False)
        finally:
            undo()
        session = session_rows(engine.store, ws.run)[-1]
        individuals = engine.store.individuals(ws.run)
        engine.close()
    wall = time.monotonic() - started
    cpu = _cpu() - cpu0
    trained = sum(1 for i in individuals if i.parents and i.status.value != "rejected")
    s, c = timers.seconds, timers.calls
    proposals = max(1, c["propose"])
    runs = max(1, c["record"])
    ops = sum(v for k, v in s.items() if k.startswith("op:"))
    duty, gap = _steady_duty(fake.runs, slots, first_child[0] if first_child else started)
    controller = s["propose"] + s["claim"] + s["checkout"] + s["record"]
    held = float(session.get("held_seconds") or 0.0)
    return Measure(
        slots=slots, budget=budget, children=trained, proposals=c["propose"], runs=c["record"],
        propose_s=s["propose"] / proposals, operator_s=ops / proposals, novelty_s=s["novelty"] / proposals,
        guard_s=s["guard"] / proposals, store_s=(s["intake"] - s["novelty"] - s["guard"]) / proposals,
        device_side_s=(s["claim"] + s["checkout"] + s["record"]) / runs, checkout_s=s["checkout"] / runs,
        record_s=s["record"] / runs, per_child_s=controller / max(1, trained), cpu_per_child_s=cpu / max(1, trained),
        gap_s=gap, duty=duty,
        session_duty=float(session.get("training_seconds") or 0.0) / held if held else float("nan"),
        wall_s=wall,
    )  # fmt: skip


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (git, mostly)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def median_of(rows: list[Measure]) -> Measure:
    numeric = {k: statistics.median(getattr(r, k) for r in rows) for k, v in asdict(rows[0]).items()
               if isinstance(v, float)}  # fmt: skip
    return replace(rows[0], **numeric)


def markdown(rows: list[Measure], repeats: int) -> str:
    head = ("| devices | budget s | children | device runs | controller wall s / child | CPU s / child | proposal s"
            " | operator s | novelty s | guard s | store s | per device run s | device gap s | duty, steady |"
            " duty, session |")  # fmt: skip
    lines = [head, "|" + "---:|" * 15]
    for r in rows:
        lines.append(
            f"| {r.slots} | {r.budget:g} | {r.children} | {r.runs} | {r.per_child_s:.3f} | {r.cpu_per_child_s:.3f} | "
            f"{r.propose_s:.3f} | {r.operator_s:.3f} | {r.novelty_s:.3f} | {r.guard_s:.3f} | {r.store_s:.3f} | "
            f"{r.device_side_s:.3f} | {r.gap_s:.3f} | {r.duty:.3f} | {r.session_duty:.3f} |"
        )
    lines.append(f"\nMedians of {repeats} runs per row.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", default="1,4,8", help="fake device counts")
    ap.add_argument("--budgets", default="1,2", help="seconds each fake run sleeps")
    ap.add_argument(
        "--children", type=int, default=0, help="children per run (default: max(24, 6 x devices))"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evolve-overhead-"))
    _, fingerprint = prepared_data(workdir)
    rows = []
    for slots in (int(s) for s in args.slots.split(",")):
        for budget in (float(b) for b in args.budgets.split(",")):
            children = args.children or max(24, 6 * slots)
            repeats = [
                measure(workdir, slots, budget, children, fingerprint, seed=k) for k in range(args.repeats)
            ]
            row = median_of(repeats)
            print(f"[overhead] {slots} device(s), {budget:g} s: {row.per_child_s:.3f} s/child, "
                  f"gap {row.gap_s:.3f} s, duty {row.duty:.3f}", flush=True)  # fmt: skip
            rows.append(row)
    table = markdown(rows, args.repeats)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "load": os.getloadavg(), "repeats": args.repeats,
            "rows": [asdict(r) for r in rows], "table": table,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
