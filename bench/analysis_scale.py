"""How fast is the analysis of a big run? 100,000 synthetic individuals in a real store.

    python bench/analysis_scale.py [--individuals 100000] [--repeats 5] [--out DIR]

Builds a store with the real schema (`evolve.store.Store`, so every migration is applied) and
fills it in bulk: a baseline with three seeds, then children drawn from a rank-biased pool of
accepted parents on four islands, 5% merge crossovers, 8% crashes, 3% refused by the guard,
re-evaluations of close calls and a depth-24 validation of the top 20. Then it times
`analysis.lineage()` and each plot (figure built and rendered to PNG) several times and prints a
table with the medians of wall and CPU time. Targets (issue 7): lineage <= 2 s, each plot <= 10 s
(judged on CPU time, which a busy shared machine does not inflate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"lineage": 2.0, "progress": 10.0, "lineage_tree": 10.0, "transfer": 10.0}


def build_store(db: Path, n: int, seed: int = 0) -> None:
    from evolve.store import Store

    rng = np.random.default_rng(seed)
    store = Store(db)
    store.add_run("bench", strategy="population", profile="h100", settings={"islands": 4, "depth": 12})
    t0 = time.time() - n * 30.0  # one child every 30 s
    score = np.full(n, np.nan)
    parents: list[list[int]] = [[]]
    island = np.zeros(n, dtype=np.int64)
    generation = np.zeros(n, dtype=np.int64)
    status = np.array(["evaluated"] * n, dtype=object)
    score[0] = 1.0
    pools: list[list[int]] = [[0] for _ in range(4)]  # accepted individuals per island
    u = rng.random((n, 4))
    noise = rng.normal(0.01, 0.01, n)
    for i in range(1, n):
        isl = i % 4
        pool = pools[isl]
        ranked = pool[-64:]  # the newest accepted are the best (the pool only ever improves)
        pick = ranked[-1 - min(int(rng.pareto(1.5)), len(ranked) - 1)]
        ps = [pick]
        if u[i, 0] < 0.05:  # merge crossover with another island's best
            other = pools[(isl + 1) % 4][-1]
            if other != pick:
                ps.append(other)
        parents.append(ps)
        island[i] = isl
        generation[i] = 1 + max(generation[p] for p in ps)
        if u[i, 1] < 0.08:
            status[i] = "failed"
            continue
        if u[i, 1] < 0.11:
            status[i] = "rejected"
            continue
        # Gains shrink as the score nears an asymptote of 0.85, as they do in a real run.
        best = min(score[p] for p in ps)
        score[i] = best + noise[i] * (best - 0.85) / 0.15
        if score[i] < score[pick]:
            pool.append(i)
    ids = [f"g{i:04d}" for i in range(n)]
    created = t0 + np.arange(n) * 30.0
    ops = np.where(u[:, 2] < 0.5, "optuna", "llm_mutation").astype(object)
    ops[0] = "baseline"
    multi = np.array([len(p) > 1 for p in parents])
    ops[multi] = "merge_crossover"
    rows = [
        (
            ids[i], "bench", f"{i:040x}", f"evo/bench/{ids[i]}", json.dumps([ids[p] for p in parents[i]]),
            ops[i], f"idea number {i}", int(island[i]), int(generation[i]), status[i],
            "accept" if i and score[i] < score[parents[i][0]] else None, created[i], created[i] + 5, created[i] + 300,
            "duplicate code" if status[i] == "rejected" else None,
        )
        for i in range(n)
    ]  # fmt: skip
    edges = [
        (ids[i], ids[p], "merge" if len(ps) > 1 else "mutation")
        for i, ps in enumerate(parents)
        for p in dict.fromkeys(ps)
    ]
    evals = []
    for i in range(n):
        if status[i] == "rejected":
            continue
        seeds = 3 if i == 0 or (i % 7 == 0 and status[i] == "evaluated") else 1
        for s in range(seeds):
            ok = status[i] == "evaluated"
            bpb = float(score[i] + rng.normal(0, 0.003)) if ok else None
            purpose = "baseline" if i == 0 else ("search" if s == 0 else "reeval")
            evals.append(
                (ids[i], 12, 300.0, s, "h100", "ok" if ok else "crash", bpb, purpose, created[i] + 300, "0")
            )
    top = np.argsort(np.where(np.isnan(score), np.inf, score))[:20]
    for i in [0, *top.tolist()]:
        for s in range(2 if i == 0 else 1):
            bpb = float(score[i] * 0.9 + rng.normal(0, 0.004))
            evals.append((ids[i], 24, 900.0, s, "h100", "ok", bpb, "validation", created[-1] + 1000, "0,1"))
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO individuals (id, run, commit_sha, branch, parents, operator, description, island,"
            " generation, status, decision, created, started, finished, guard_reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany("INSERT INTO lineage (child, parent, kind) VALUES (?, ?, ?)", edges)
        conn.executemany(
            "INSERT INTO evaluations (individual, depth, budget, seed, profile, status, val_bpb, purpose, created,"
            " device, wall_seconds, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 310.0, '{}')",
            evals,
        )
    store.close()


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of this process per call (on a shared machine, the CPU time
    is what the call itself costs; the wall time adds whatever the other processes took)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--individuals", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="keep the store and the PNGs here")
    args = ap.parse_args()
    import analysis
    from analysis import plots

    work = args.out or Path(tempfile.mkdtemp(prefix="analysis-scale-"))
    db = work / ".evolve" / "evolve.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():
        db.unlink()
    start = time.perf_counter()
    build_store(db, args.individuals)
    print(f"built {args.individuals:,} individuals in {time.perf_counter() - start:.1f} s "
          f"({db.stat().st_size / 1e6:.0f} MB) at {db}")  # fmt: skip

    load = os.getloadavg()
    results = {"lineage": timed(lambda: analysis.lineage(db), args.repeats)}
    df = analysis.lineage(db)
    results["evaluations"] = timed(lambda: analysis.evaluations(db), max(1, args.repeats // 2))
    results["operator_stats"] = timed(lambda: analysis.operator_stats(df), args.repeats)
    results["descendants(root)"] = timed(lambda: analysis.descendants(df, df["id"].iloc[0]), args.repeats)
    for name, draw in plots.PLOTS.items():
        results[name] = timed(lambda draw=draw: plots.png_bytes(draw(df)), max(1, args.repeats // 2 + 1))
        plots.save(draw(df), work / f"{name}.png")
    print(f"\n{len(df):,} individuals, {int(df['evaluations'].sum()):,} evaluations, "
          f"{int((df['parents'].map(len) > 1).sum()):,} crossovers, {os.cpu_count()} CPUs\n")  # fmt: skip
    print(f"load average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}\n")
    print(f"{'step':<20} {'wall median':>11} {'wall min':>9} {'cpu median':>10} {'target':>7}  runs")
    for name, (wall, cpu) in results.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if statistics.median(cpu) <= target else "SLOW")
        print(
            f"{name:<20} {statistics.median(wall):>11.3f} {min(wall):>9.3f} {statistics.median(cpu):>10.3f} "
            f"{'' if target is None else f'{target:g}':>7}  {len(wall)} {verdict}"
        )
    print(f"\nPNGs in {work}")


if __name__ == "__main__":
    main()
