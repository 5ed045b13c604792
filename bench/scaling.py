"""Scaling of the search over the GPUs of one host: experiments per hour with N GPUs against 1.

Runs a real evolution (the engine, the Optuna tweak only, no LLM) in one fresh workspace, one
session per GPU count, largest first: the first session also evaluates the baseline (its seeds run
in parallel), later ones resume the same run on fewer GPUs. Each session is measured over a window
that opens once the baseline is accepted (or, when resuming, at the session's start) and lasts
`--minutes`; then the session stops proposing and lets its runs finish (they count for the part of
them inside the window). The same command works on 2, 4 or 8 GPUs:

    python bench/scaling.py --source local:/tmp/corpus --budget 60 --minutes 3 --out scaling.json
    python bench/scaling.py --profile tiny --gpus cpu:2 --budget 3 --minutes 0.5   # CPU smoke test

Columns: experiments = runs that ended inside the window; exp/h = device runs per hour inside the
window (runs cut by its edges count in proportion); duty = training seconds / device-held seconds
inside the window; session duty = the same ratio as the engine stores it for the whole session
(baseline, start-up and wind-down included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout too, not only when installed

from evolve.cli_common import parse_gpus  # noqa: E402
from evolve.engine import DB_FILE, Engine, EngineConfig  # noqa: E402
from evolve.scheduler import StopConditions, StopReason, session_rows  # noqa: E402
from evolve.store import Store  # noqa: E402
from genome.record import BASELINE_ID  # noqa: E402
from genome.workspace import init_workspace  # noqa: E402
from prepare.pipeline import prepare_dataset  # noqa: E402
from prepare.profiles import PROFILES, get_profile  # noqa: E402
from trainer import LocalExecutor  # noqa: E402

RUN = "scaling"


@dataclass(frozen=True)
class Row:
    gpus: int
    devices: str
    experiments: int  # runs that ended inside the window
    window_s: float
    exp_per_hour: float
    exp_per_hour_per_gpu: float
    duty_cycle: float  # training seconds / device-held seconds inside the window
    session_duty_cycle: float | None  # the engine's own figure for the whole session
    ok_runs: int
    failed_runs: int
    stop: str
    ratio_vs_1: float | None = None


def _window_stats(store: Store, since: float, t0: float, t1: float, n: int) -> dict:
    """Runs of this session, each counted for the part of it inside [t0, t1]."""
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT e.status, e.created, e.wall_seconds, e.training_seconds FROM evaluations e"
            " JOIN individuals i ON i.id = e.individual WHERE i.run = ? AND e.created >= ?",
            (RUN, since),
        ).fetchall()
    runs = training = 0.0
    ended = ok = failed = 0
    for status, created, wall, train in rows:
        wall = float(wall or 0.0)
        start = created - wall
        overlap = max(0.0, min(created, t1) - max(start, t0))
        share = overlap / wall if wall > 0 else float(t0 <= created <= t1)
        runs += share
        training += share * float(train or 0.0) if status == "ok" else 0.0
        if t0 <= created <= t1:
            ended += 1
            ok += status == "ok"
            failed += status != "ok"
    span = max(t1 - t0, 1e-9)
    return {"runs": runs, "ended": ended, "ok": ok, "failed": failed,
            "per_hour": runs / span * 3600, "duty": training / (span * n)}  # fmt: skip


def run_session(ws, config: EngineConfig, devices: tuple[str, ...], minutes: float | None,
                experiments: int | None) -> Row:  # fmt: skip
    """One `evolve run` session on `devices`, measured over its window."""
    state: dict[str, float] = {}
    db = ws.state_dir / DB_FILE
    resumed = False
    done_before = 0
    if db.exists():
        with Store(db, readonly=True) as store:
            base = store.get(BASELINE_ID)
            resumed = base is not None and base.decision == "accept"
            done_before = sum(1 for i in store.individuals(RUN) if i.parents and i.status.value != "rejected")
    stop = (
        StopConditions(max_experiments=done_before + experiments * len(devices))
        if experiments
        else StopConditions()
    )
    holder: dict[str, Engine] = {}
    opened = threading.Event()

    def on_event(kind: str, payload: dict) -> None:
        if kind == "session_start":
            state["since"] = time.time()
            if resumed:
                state["t0"] = state["since"]
                opened.set()
        elif kind == "decision" and payload.get("id") == BASELINE_ID and "t0" not in state:
            state["t0"] = time.time()
            opened.set()

    def close_window() -> None:  # the window's end: stop proposing, let the runs in flight finish
        if minutes is None:
            return
        opened.wait()
        time.sleep(minutes * 60)
        state["t1"] = time.time()
        engine = holder["engine"]
        if engine.scheduler is not None:
            engine.scheduler.request_stop(StopReason.HOURS)

    with LocalExecutor(devices) as executor:
        engine = Engine(ws, replace(config, stop=stop), executor, on_event=on_event)
        holder["engine"] = engine
        timer = threading.Thread(target=close_window, daemon=True)
        timer.start()
        reason = engine.run()
        session = session_rows(engine.store, RUN)[-1]
        t0 = state.get("t0", state.get("since", time.time()))
        t1 = state.get("t1") or time.time()
        stats = _window_stats(engine.store, state.get("since", 0.0), t0, t1, len(devices))
        engine.close()
    held = float(session.get("held_seconds") or 0.0)
    session_duty = float(session.get("training_seconds") or 0.0) / held if held > 0 else None
    return Row(
        gpus=len(devices), devices=",".join(devices), experiments=stats["ended"], window_s=round(t1 - t0, 1),
        exp_per_hour=round(stats["per_hour"], 2), exp_per_hour_per_gpu=round(stats["per_hour"] / len(devices), 2),
        duty_cycle=round(stats["duty"], 4), session_duty_cycle=round(session_duty, 4) if session_duty else None,
        ok_runs=stats["ok"], failed_runs=stats["failed"], stop=reason.value,
    )  # fmt: skip


def markdown(rows: list[Row]) -> str:
    head = "| GPUs | experiments | wall s | exp/h | exp/h per GPU | vs 1 GPU | duty cycle | session duty |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r.gpus):
        ratio = f"{r.ratio_vs_1:.2f}x" if r.ratio_vs_1 is not None else "-"
        session = f"{r.session_duty_cycle:.3f}" if r.session_duty_cycle is not None else "-"
        lines.append(f"| {r.gpus} | {r.experiments} | {r.window_s:.0f} | {r.exp_per_hour:.1f} | "
                     f"{r.exp_per_hour_per_gpu:.1f} | {ratio} | {r.duty_cycle:.3f} | {session} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="h100", choices=sorted(PROFILES))
    ap.add_argument("--source", help="data source (default: the profile's); prepared here if missing")
    ap.add_argument(
        "--gpus", default=None, help="devices as for `evolve run`: all (default on GPU profiles), 0,1, cpu:N"
    )
    ap.add_argument("--counts", default="all,1", help="GPU counts to measure, e.g. all,1 or 8,4,2,1")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per experiment")
    ap.add_argument("--depth", type=int, help="model depth (default: the workspace's)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument(
        "--minutes", type=float, default=None, help="measured window per GPU count (default 3)"
    )
    group.add_argument(
        "--experiments", type=int, help="instead: children per GPU per session (window to the last)"
    )
    ap.add_argument(
        "--baseline-seeds", type=int, default=2, help="evaluations of the baseline (first session)"
    )
    ap.add_argument("--workdir", type=Path, help="where the workspace goes (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="write the rows and the setting as JSON here")
    args = ap.parse_args(argv)
    minutes = None if args.experiments else (args.minutes if args.minutes is not None else 3.0)

    profile = get_profile(args.profile)
    source = args.source or profile.default_source
    devices = parse_gpus(args.gpus, profile.name)
    counts = sorted(
        {len(devices) if c.strip() == "all" else int(c) for c in args.counts.split(",")}, reverse=True
    )
    if any(not 1 <= c <= len(devices) for c in counts):
        ap.error(
            f"--counts {args.counts}: each count must be between 1 and {len(devices)} (the devices of --gpus)"
        )
    if devices[0] == "cpu":  # several CPU runs side by side: one thread each, or they fight over the cores
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(devices))))
    manifest = prepare_dataset(profile, source=source)
    os.environ["EVOLVE_DATA"] = str(manifest.path)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evolve-scaling-"))
    ws = init_workspace(workdir / "ws", RUN, profile=profile.name, source=source, budget=args.budget,
                        depth=args.depth)  # fmt: skip
    config = EngineConfig.from_workspace(ws, operators=("optuna_tweak",), baseline_seeds=args.baseline_seeds,
                                         budget=args.budget)  # fmt: skip
    rows: list[Row] = []
    for n in counts:
        print(f"[scaling] {n} device(s): {','.join(devices[:n])}", flush=True)
        row = run_session(ws, config, devices[:n], minutes, args.experiments)
        print(f"[scaling]   {row.experiments} runs ended in {row.window_s:.0f} s, {row.exp_per_hour:.1f}/h, "
              f"duty {row.duty_cycle:.3f}", flush=True)  # fmt: skip
        rows.append(row)
    one = next((r for r in rows if r.gpus == 1), None)
    if one is not None and one.exp_per_hour > 0:
        rows = [Row(**{**asdict(r), "ratio_vs_1": round(r.exp_per_hour / one.exp_per_hour, 3)}) for r in rows]
    table = markdown(rows)
    print(table)
    if args.out:
        gpu = "cpu"
        if devices[0] != "cpu":
            import torch

            gpu = torch.cuda.get_device_name(int(devices[0]))
        args.out.write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "device": gpu, "profile": profile.name, "source": source, "data_fingerprint": manifest.fingerprint,
            "budget": args.budget, "minutes": minutes, "experiments_per_gpu": args.experiments,
            "baseline_seeds": args.baseline_seeds, "workspace": str(ws.root), "rows": [asdict(r) for r in rows],
            "table": table,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
