"""Days of running, compressed: the real engine for thousands of children with a fast fake trainer.

The one place a fake trainer is right: 10,000 real training runs are impossible here, and what is
measured is the controller around them. `SoakTrainer` is `bench/overhead.py`'s `FakeTrainer`
(no training: a synthetic val_bpb from the child's knobs and the seed, no sleep) that also
writes a training log of realistic size into the run's log folder, so that log compression and
capping are measured too. Everything else is the real engine: the Optuna tweak (its TPE studies
in `.evolve/optuna.db`) and the merge crossover commit real children in git, the novelty check
and the static guard read them, the SQLite store records every proposal, run and decision, the
worktree pool checks each one out, promotion decides, backups are taken.

Measured while the run goes (a sampler thread, every `--every` children):

- controller CPU seconds per child over each window: this process (every thread) and, apart,
  its git subprocesses; and the wall seconds per child of the parts (the operator, of which
  Optuna's ask, the novelty check, the guard, recording and promotion, the worktree checkout);
- the controller's resident memory (RSS) and its peak;
- the store's size, and the disk used by logs, worktrees, optuna.db and the git repository.

Then the read paths on a 100,000-individual store (bench/analysis_scale.py's synthetic one):
opening it (reader; writer with its integrity_check), a backup, `evolve status`'s snapshot,
`top`, `show`, and the reads the engine makes per proposal and per decision.

    python bench/soak.py --children 10000 --out docs/bench/soak.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from dataclasses import replace  # noqa: E402

from overhead import OPERATORS, FakeTrainer, Timers, instrument, make_workspace, prepared_data  # noqa: E402

from evolve.engine import Engine, EngineConfig  # noqa: E402
from evolve.scheduler import StopConditions  # noqa: E402
from trainer import LocalExecutor, RunResult  # noqa: E402

GOAL_CPU_PER_CHILD = 0.2  # seconds of controller CPU per child at 10,000 children
LOG_LINE = (
    "step {step:05d} | loss {loss:.6f} | lr {lr:.3e} | dt {dt:.1f}ms | tok/s {tps:,} | mfu {mfu:.2f}%\n"
)


class SoakTrainer(FakeTrainer):
    """FakeTrainer that also writes a log like a real run's: `lines` step lines, and now and then
    (1 run in `big_every`) a runaway log 30 times longer, which the engine must cap."""

    def __init__(self, *args: Any, lines: int = 2000, big_every: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, sleep=False, **kwargs)
        self.lines = lines
        self.big_every = big_every
        self.count = 0

    def __call__(self, worktree: Path, *, log_dir: Path | None = None, seed: int = 0, **kw: Any) -> RunResult:
        result = super().__call__(worktree, seed=seed, **kw)
        if log_dir is None:
            return result
        with self._lock:
            self.count += 1
            n = self.lines * (30 if self.count % self.big_every == 0 else 1)
        rng = random.Random(f"{worktree}:{seed}:{self.count}")
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "run.log"
        with open(path, "w") as f:
            for step in range(n):
                f.write(LOG_LINE.format(step=step, loss=3.0 * 0.999**step + rng.random() * 0.01,
                                        lr=1e-3, dt=rng.uniform(90, 110), tps=rng.randint(400_000, 500_000),
                                        mfu=rng.uniform(38, 42)))  # fmt: skip
            f.write(f"---\nval_bpb: {result.metrics.get('val_bpb', 'nan')}\n")
        return replace(result, log_path=str(path))


class CpuTimers(Timers):
    """Timers that also sum each part's CPU seconds on its own thread (`time.thread_time`), which
    waiting for the GIL or for git does not inflate, as wall seconds are."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        timed = super().wrap(name, fn)

        def counted(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return timed(*args, **kwargs)
            finally:
                with self._lock:
                    self.cpu[name] += time.thread_time() - start

        return counted


def _rss() -> tuple[float, float]:
    """(resident, peak resident) MB of this process."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _cpu() -> tuple[float, float]:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


def _files(path: Path) -> int:
    out = subprocess.run(["find", str(path), "-type", "f"], capture_output=True, text=True).stdout
    return len(out.splitlines())


class Sampler(threading.Thread):
    """Every `every` children: CPU, memory, disk, and the parts' timers, per window."""

    def __init__(self, engine: Engine, timers: CpuTimers, every: int, tick: float = 0.5) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.engine, self.timers, self.every, self.tick = engine, timers, every, tick
        self.rows: list[dict[str, Any]] = []
        self.report: Any = None  # called with the newest window and every sample so far
        self.stop = threading.Event()
        self._excluded = [0.0, 0.0]  # CPU spent measuring the disk, not by the controller

    def sample(self, children: int) -> None:
        own, kids = _cpu()
        rss, peak = _rss()
        seconds, calls, cpu = dict(self.timers.seconds), dict(self.timers.calls), dict(self.timers.cpu)
        row = {"part_cpu": cpu, "children": children, "time": time.time(), "cpu_self": own - self._excluded[0],
               "cpu_git": kids - self._excluded[1], "rss_mb": rss, "peak_rss_mb": peak,
               "seconds": seconds, "calls": calls}  # fmt: skip
        state = self.engine.ws.state_dir
        row.update(
            store_bytes=sum(_du(Path(f"{state / 'evolve.db'}{s}")) for s in ("", "-wal", "-shm")),
            backups_bytes=_du(state / "backups"),
            logs_bytes=_du(state / "logs"),
            log_files=_files(state / "logs"),
            worktrees_bytes=_du(state / "worktrees"),
            optuna_bytes=sum(_du(Path(f"{state / 'optuna.db'}{s}")) for s in ("", "-wal", "-shm")),
            git_bytes=_du(self.engine.ws.root / ".git"),
        )
        after = _cpu()  # measuring the disk is not the controller's work
        self._excluded[0] += after[0] - own
        self._excluded[1] += after[1] - kids
        self.rows.append(row)
        if self.report is not None and len(self.rows) > 1:
            self.report(windows(self.rows[-2:])[-1:], self.rows)

    def run(self) -> None:
        next_at = 0
        while not self.stop.is_set():
            n = self.engine.experiments()
            if n >= next_at:
                self.sample(n)
                next_at = (n // self.every + 1) * self.every
            self.stop.wait(self.tick)


def windows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per window between two samples: controller CPU per child, and the parts per call."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        n = b["children"] - a["children"]
        if n <= 0:
            continue
        dsec = {k: b["seconds"].get(k, 0.0) - a["seconds"].get(k, 0.0) for k in b["seconds"]}
        dcpu = {k: b["part_cpu"].get(k, 0.0) - a["part_cpu"].get(k, 0.0) for k in b["part_cpu"]}
        dcalls = {k: b["calls"].get(k, 0) - a["calls"].get(k, 0) for k in b["calls"]}

        def per(k: str, dsec: dict = dsec, n: int = n) -> float:  # seconds of a part per child
            return dsec.get(k, 0.0) / n

        out.append({
            "children": b["children"], "cpu_self_per_child": (b["cpu_self"] - a["cpu_self"]) / n,
            "cpu_git_per_child": (b["cpu_git"] - a["cpu_git"]) / n,
            "wall_per_child": (b["time"] - a["time"]) / n, "rss_mb": b["rss_mb"], "peak_rss_mb": b["peak_rss_mb"],
            "operator_optuna": per("op:optuna_tweak"), "operator_merge": per("op:merge_crossover"),
            "novelty": per("novelty"), "guard": per("guard"), "intake": per("intake"), "propose": per("propose"),
            "record": per("record"), "checkout": per("checkout"), "claim": per("claim"),
            "device_runs_per_child": dcalls.get("record", 0) / n,
            "cpu_parts_per_child": {k: v / n for k, v in sorted(dcpu.items())},
            **{k: b[k] for k in ("store_bytes", "backups_bytes", "logs_bytes", "log_files", "worktrees_bytes",
                                 "optuna_bytes", "git_bytes")},
        })  # fmt: skip
    return out


def soak(
    workdir: Path, children: int, slots: int, every: int, fingerprint: str, report: Any = None
) -> dict[str, Any]:
    ws = make_workspace(workdir / "ws", "soak")
    config = EngineConfig.from_workspace(
        ws, operators=OPERATORS, stop=StopConditions(max_experiments=children)
    )
    timers = CpuTimers()
    fake = SoakTrainer(fingerprint=fingerprint)
    started = time.time()
    with LocalExecutor(("cpu",) * slots, runner=fake) as executor:
        engine = Engine(ws, config, executor)
        undo = instrument(engine, timers)
        sampler = Sampler(engine, timers, every)
        sampler.report = report
        sampler.start()
        try:
            reason = engine.run(install_signals=False)
        finally:
            undo()
            sampler.stop.set()
            sampler.join()
        sampler.sample(engine.experiments())
        trained = sum(
            1 for i in engine.store.individuals(ws.run) if i.parents and i.status.value != "rejected"
        )
        engine.close()
    return {"reason": reason.value, "trained": trained, "wall_s": time.time() - started,
            "samples": sampler.rows, "windows": windows(sampler.rows), "log_lines": fake.lines}  # fmt: skip


# --- the read paths at 100,000 individuals ----------------------------------------------------------


def _timed(fn, repeats: int = 3) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def read_paths(workdir: Path, n: int) -> dict[str, Any]:
    from analysis_scale import build_store

    from evolve.live import snapshot
    from evolve.operators.weights import credits_from_store
    from evolve.population import from_store
    from evolve.store import Store
    from evolve.storefile import Backups

    db = workdir / "big" / ".evolve" / "evolve.db"
    db.parent.mkdir(parents=True)
    t = time.time()
    build_store(db, n)
    built = time.time() - t
    out: dict[str, Any] = {"individuals": n, "build_s": built, "store_bytes": db.stat().st_size}
    out["open_reader"] = _timed(lambda: Store(db, readonly=True).close())
    out["open_writer_integrity_check"] = _timed(lambda: Store(db).close(), repeats=1)
    backups = Backups(db, keep=2)
    out["backup"] = _timed(lambda: backups.make("bench"), repeats=1)
    out["backup_bytes"] = backups.list()[-1].stat().st_size
    with Store(db, readonly=True) as store:
        run = "bench"
        some = store.individuals(run)[n // 2].id
        out["status_snapshot"] = _timed(lambda: snapshot(store, run, depth=12, islands=4), repeats=2)
        out["top_leaderboard"] = _timed(lambda: store.leaderboard(12, run, limit=10))
        out["show_one"] = _timed(
            lambda: (store.get(some), store.scores(12, run).get(some), store.evaluations(some))
        )
        # what the engine reads per proposal and per decision
        out["per_proposal_scores"] = _timed(lambda: store.scores(12, run))
        out["per_proposal_noise_floor"] = _timed(lambda: store.noise_floor(12, run))
        out["per_proposal_credits"] = _timed(lambda: credits_from_store(store, run))
        out["per_decision_accepted"] = _timed(lambda: store.individuals(run, decision="accept"))
        out["novelty_lookup"] = _timed(lambda: store.find_by_code_hash("0" * 64, run))
        out["resume_population"] = _timed(
            lambda: from_store(store, run, 12, "population", islands=4), repeats=1
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=10_000)
    ap.add_argument("--slots", type=int, default=2, help="fake CPU devices")
    ap.add_argument("--every", type=int, default=500, help="children between samples")
    ap.add_argument(
        "--store-size", type=int, default=100_000, help="individuals of the read-path store (0: skip)"
    )
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evolve-soak-"))
    _, fingerprint = prepared_data(workdir)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "command": " ".join(["python", "bench/soak.py", *(argv or sys.argv[1:])]),
        "children_asked": args.children, "slots": args.slots, "goal_cpu_per_child_s": GOAL_CPU_PER_CHILD,
    }  # fmt: skip

    def report(newest: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
        for w in newest:  # progress, and a partial file that a crash or a kill leaves behind
            print(f"[soak] {w['children']:6d} children: CPU {w['cpu_self_per_child']:.3f} s/child (+ git "
                  f"{w['cpu_git_per_child']:.3f}), wall {w['wall_per_child']:.3f}, RSS {w['rss_mb']:.0f} MB, "
                  f"optuna {w['operator_optuna']:.3f}, novelty {w['novelty']:.4f}, record {w['record']:.3f}, "
                  f"store {w['store_bytes'] / 1e6:.1f} MB, logs {w['logs_bytes'] / 1e6:.1f} MB, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        if args.out:
            partial = args.out.with_suffix(".partial.json")
            partial.write_text(
                json.dumps({**result, "windows_so_far": windows(samples)}, indent=1, default=str)
            )

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    result["soak"] = soak(workdir, args.children, args.slots, args.every, fingerprint, report)
    result["load_after_soak"] = os.getloadavg()
    if args.store_size:
        result["read_paths"] = read_paths(workdir, args.store_size)
        print(json.dumps(result["read_paths"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
        args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
