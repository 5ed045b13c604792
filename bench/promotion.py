"""Judging children: how often the engine's real decision code keeps what is not better, and its power.

Two parts.

`simulate` (the default) runs `evolve.promotion.judge` itself, with the noise model built by
`NoiseModel.build` from simulated replicates, on a Gaussian model of val_bpb:

    value(genome, seed) = mu(genome) + shared(seed) + own(genome, seed)

with shared ~ N(0, rho * sigma^2), common to every genome on that seed (the seed fixes data order
and init), and own ~ N(0, (1 - rho) * sigma^2), so one genome's seed-to-seed sd is sigma and a
paired difference's is sqrt(2 (1 - rho)) sigma. Each trial draws a fresh world: the baseline's
`baseline_seeds` runs, and (in the `steady` state) `--elites` accepted children with their seeds
shared with the baseline, which give the noise model its paired part; then one child with a true
change of `effect` sigmas is run seed by seed (42, 43, ...) and judged after each, exactly as the
engine does, until a decision. Reported per effect: the share accepted and the mean number of
child seeds. The states:

- `start`: only the baseline's seeds (sigma with baseline_seeds - 1 degrees of freedom; the
  test takes tau = sqrt(2) sigma, cautious when rho > 0);
- `steady`: the noise model a run has once elites gathered seeds (paired tau measured).

Each state also gets the exact numbers of `evolve.sequential.operating` for the same design, so
the simulation checks the arithmetic and the arithmetic checks the simulation.
`--json` prints one object with the headline (the `steady` state at `--rho`): false_keep_rate
(no change), worse_keep_rate (0.5 sigma worse), power_1sigma, power_2sigma, mean_seeds_null.

`real` trains for real: a workspace with the default train.py on the tiny profile (CPU; its budget
is in training tokens, which the harness's data stream counts, so the machine's load changes a
run's wall clock, not its steps), the real engine, and an operator that proposes children that change nothing (each adds one unused
assignment to train.py: a comment alone would be refused by the novelty check as the same code).
It reports how many of them the engine accepted, the seeds it spent, and how long it took.

    python bench/promotion.py --json
    python bench/promotion.py --trials 20000 --out docs/bench/promotion.json
    python bench/promotion.py real --children 30 --slots 2 --out docs/bench/promotion.json

`real --out FILE` adds its result under the key `real` when FILE already holds the simulation's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evolve.promotion import PAIRED_DOF, Action, NoiseModel, PromotionPolicy, judge  # noqa: E402
from evolve.sequential import boundaries, operating  # noqa: E402

FIRST_SEED = 42
SIGMA = 0.01  # bpb; every figure is in units of sigma, so its value does not matter
EFFECTS = {"null": 0.0, "worse": 0.5, "gain_1sigma": -1.0, "gain_2sigma": -2.0}
GOALS = {"false_keep_rate": ("<=", 0.05), "worse_keep_rate": ("<=", 0.01), "power_2sigma": (">=", 0.8),
         "mean_seeds_null": ("<=", 1.6)}  # fmt: skip


# --- the simulation -------------------------------------------------------------------------------


def world(rng: np.random.Generator, policy: PromotionPolicy, rho: float, elites: int, seeds_each: int):
    """One run's replicates: the baseline's seeds and (optionally) accepted elites paired with it."""
    n_seeds = max(policy.baseline_seeds, seeds_each, policy.max_seeds) + 2
    seeds = [FIRST_SEED + k for k in range(n_seeds)]
    shared = dict(zip(seeds, rng.normal(0.0, math.sqrt(rho) * SIGMA, n_seeds), strict=True))
    own = math.sqrt(1.0 - rho) * SIGMA

    def runs(mu: float, n: int) -> dict[int, float]:
        return {s: mu + shared[s] + rng.normal(0.0, own) for s in seeds[:n]}

    values = {"base": runs(1.0, policy.baseline_seeds)}
    for i in range(elites):
        values[f"e{i}"] = runs(1.0 - rng.uniform(0, 3) * SIGMA, seeds_each)
    model = NoiseModel.build(values, list(values))
    return values["base"], model, lambda mu, seed: mu + shared[seed] + rng.normal(0.0, own)


def trial(
    rng, policy: PromotionPolicy, rho: float, effect: float, elites: int, seeds_each: int
) -> tuple[bool, int]:
    parent, model, draw = world(rng, policy, rho, elites, seeds_each)
    child: dict[int, float | None] = {}
    for k in range(policy.max_seeds + 3):
        seed = FIRST_SEED + k
        child[seed] = draw(1.0 + effect * SIGMA, seed)
        d = judge(child, parent, model, policy)
        if d.action is Action.ACCEPT:
            return True, len(child)
        if d.action is Action.REJECT:
            return False, len(child)
        assert d.action is Action.REEVALUATE, d  # the parent has every seed a child can reach here
    raise AssertionError("no decision within max_seeds")


def state(
    policy: PromotionPolicy, rho: float, name: str, trials: int, seed: int, elites: int
) -> dict[str, Any]:
    """Simulated and exact acceptance rates and seeds per decision for every effect, in one state."""
    rng = np.random.default_rng(seed)
    n_elites, seeds_each = (0, 0) if name == "start" else (elites, 3)
    probe = world(np.random.default_rng(0), policy, rho, n_elites, seeds_each)[1]
    tau_true = math.sqrt(2.0 * (1.0 - rho))  # in sigma units
    paired = probe.paired
    dof = probe.pair_dof if paired else probe.sigma_dof
    scale = 1.0 if paired else math.sqrt(2.0) / tau_true  # the test's tau over the true one
    bounds = boundaries(policy.design, dof)
    out: dict[str, Any] = {"state": name, "rho": rho, "tau": "paired (measured)" if paired else "sqrt(2) x sigma",
                           "dof": dof, "trials": trials, "effects": {}}  # fmt: skip
    for label, effect in EFFECTS.items():
        results = [trial(rng, policy, rho, effect, n_elites, seeds_each) for _ in range(trials)]
        accepted = sum(a for a, _ in results)
        p_exact, seeds_exact = operating(bounds, effect / tau_true, scale)
        out["effects"][label] = {
            "effect_sigmas": effect,
            "accepted": accepted / trials,
            "stderr": math.sqrt(max(accepted, 1) * (trials - accepted) / trials) / trials,
            "mean_seeds": sum(n for _, n in results) / trials,
            "exact_accepted": p_exact,
            "exact_mean_seeds": seeds_exact,
        }
    return out


def headline(steady: dict[str, Any]) -> dict[str, float]:
    e = steady["effects"]
    return {
        "false_keep_rate": e["null"]["accepted"],
        "worse_keep_rate": e["worse"]["accepted"],
        "power_1sigma": e["gain_1sigma"]["accepted"],
        "power_2sigma": e["gain_2sigma"]["accepted"],
        "mean_seeds_null": e["null"]["mean_seeds"],
    }


def verdicts(h: dict[str, float]) -> dict[str, bool]:
    return {k: (h[k] <= v if op == "<=" else h[k] >= v) for k, (op, v) in GOALS.items()}


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    policy = PromotionPolicy()
    rows = []
    for rho in sorted({args.rho, *args.rhos}):
        for name in ("start", "steady"):
            started = time.perf_counter()
            rows.append(state(policy, rho, name, args.trials, args.seed, args.elites))
            rows[-1]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"# rho {rho} {name}: {json.dumps(headline(rows[-1]))}", file=sys.stderr, flush=True)
    steady = next(r for r in rows if r["state"] == "steady" and r["rho"] == args.rho)
    h = headline(steady)
    return {
        "bench": "promotion",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "command": "python bench/promotion.py " + " ".join(sys.argv[1:]),
        "policy": {
            k: getattr(policy, k) for k in ("baseline_seeds", "max_seeds", "alpha", "gain", "futility")
        },
        "paired_dof_needed": PAIRED_DOF,
        **h,
        "goals": {k: f"{op} {v}" for k, (op, v) in GOALS.items()},
        "met": verdicts(h),
        "headline_state": {"state": "steady", "rho": args.rho},
        "states": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| rho | state | tau | dof | false keep (0) | worse keep (+0.5 sigma) | power 1 sigma | power 2 sigma "
        "| mean seeds (0) | exact: false keep / power 2 sigma / seeds (0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["states"]:
        e = r["effects"]
        lines.append(
            f"| {r['rho']:g} | {r['state']} | {r['tau']} | {r['dof']} | {e['null']['accepted']:.4f} "
            f"| {e['worse']['accepted']:.4f} | {e['gain_1sigma']['accepted']:.3f} | {e['gain_2sigma']['accepted']:.3f} "
            f"| {e['null']['mean_seeds']:.2f} | {e['null']['exact_accepted']:.4f} / "
            f"{e['gain_2sigma']['exact_accepted']:.3f} / {e['null']['exact_mean_seeds']:.2f} |"
        )
    return "\n".join(lines)


# --- the real tiny CPU proxy ----------------------------------------------------------------------


def real(args: argparse.Namespace) -> dict[str, Any]:
    from evolve.engine import Engine, EngineConfig
    from evolve.operators.base import Operator, OperatorError, Proposal, register
    from evolve.scheduler import StopConditions
    from evolve.store import Status, Store
    from genome.workspace import init_workspace
    from trainer import LocalExecutor

    @register("bench_noop")
    class NoChange(Operator):
        """A child that changes nothing: the parent's train.py plus one unused assignment."""

        name = "bench_noop"
        arity = 1

        def __init__(self, setup) -> None:
            self.count = 0

        def propose(self, ctx) -> Proposal:
            parent = ctx.parents[0]
            source = ctx.repo.read(parent.genome, "train.py")
            self.count += 1
            marker = f"_UNUSED_{ctx.rng.randrange(10**9)} = {self.count}  # changes nothing\n"
            try:
                child = ctx.repo.commit_child([parent.genome], {"train.py": source + marker},
                                              f"no change #{self.count}", self.name)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a failed proposal, as any operator's
                raise OperatorError(str(exc)) from None
            return Proposal(child)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="promotion-real-"))
    os.environ.setdefault("EVOLVE_HOME", str(work / "home"))
    from prepare.profiles import get_profile

    if args.data:
        os.environ["EVOLVE_DATA"] = str(args.data)
    else:
        from prepare.pipeline import prepare_dataset

        os.environ["EVOLVE_DATA"] = str(prepare_dataset(get_profile("tiny"), source="builtin").path)
    ws = init_workspace(work / "ws", run="null", profile="tiny", islands=2, budget=args.budget)
    config = EngineConfig.from_workspace(
        ws, operators=("bench_noop",), stop=StopConditions(max_experiments=args.children)
    )
    started = time.time()
    with LocalExecutor.cpu(args.slots) as ex:
        engine = Engine(ws, config, ex)
        reason = engine.run(install_signals=True)
        wall = time.time() - started
    store: Store = engine.store
    kids = [i for i in store.individuals("null") if i.parents and i.status != Status.REJECTED]
    accepted = [k.id for k in kids if k.decision == "accept"]
    seeds = {k.id: len([e for e in store.evaluations(k.id) if e.depth == config.depth]) for k in kids}
    base_runs = len(store.evaluations("g0000"))
    decisions = {e.payload["id"]: e.payload for e in store.events("null", kind="decision")}
    failed = sum(1 for k in kids if k.status == Status.FAILED)
    from evolve.live import event_text

    lines = [t for e in store.events("null") if (t := event_text(e.kind, e.payload))]
    (work / "events.log").write_text("\n".join(lines) + "\n")
    result = {
        "bench": "promotion-real",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared)",
        "command": "python bench/promotion.py " + " ".join(sys.argv[1:]),
        "stop": reason.value,
        "children": len(kids),
        "accepted": len(accepted),
        "accepted_ids": accepted,
        "failed": failed,
        "child_seeds_mean": sum(seeds.values()) / max(1, len(seeds)),
        "child_seeds": seeds,
        "baseline_runs": base_runs,
        "budget": config.budget,
        "budget_unit": get_profile("tiny").budget_unit,
        "noise": engine._evidence().model().describe(),
        "wall_seconds": round(wall, 1),
        "workspace": str(ws.root),
        "reasons": {k: decisions.get(k, {}).get("reason", "") for k in accepted},
        "decided_at_look": _looks(decisions, kids),
        "log": str(work / "events.log"),
    }
    engine.close()
    return result


def _looks(decisions: dict[str, dict], kids) -> dict[str, int]:
    """How many children were decided after 1, 2, ... paired seeds (0: a failed seed)."""
    out: dict[str, int] = {}
    for k in kids:
        n = str(len(decisions.get(k.id, {}).get("seeds") or []))
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", nargs="?", choices=["simulate", "real"], default="simulate")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--out", type=Path, help="also write the result here")
    ap.add_argument("--trials", type=int, default=4000, help="simulate: children per effect and state")
    ap.add_argument("--rho", type=float, default=0.5, help="simulate: seed correlation of the headline")
    ap.add_argument("--rhos", type=float, nargs="*", default=[0.0, 0.25, 0.75], help="simulate: others shown")
    ap.add_argument("--elites", type=int, default=10, help="simulate steady: accepted children in the model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--children", type=int, default=30, help="real: children that change nothing")
    ap.add_argument("--slots", type=int, default=2, help="real: CPU slots")
    ap.add_argument("--budget", type=float, default=None,
                    help="real: the training budget per run, in the profile's unit (default: tiny's, 65536 tokens)")  # fmt: skip
    ap.add_argument("--data", type=Path, help="real: a prepared tiny dataset (default: the builtin one)")
    ap.add_argument("--workdir", type=Path, help="real: where the workspace goes (default: a temp folder)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.rho < 1.0 or any(not 0.0 <= r < 1.0 for r in args.rhos):
        ap.error("--rho must be in [0, 1)")
    result = simulate(args) if args.mode == "simulate" else real(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        saved = result
        if args.mode == "real" and args.out.is_file():  # beside the simulation's figures
            saved = {**json.loads(args.out.read_text()), "real": result}
        args.out.write_text(json.dumps(saved, indent=1) + "\n")
    if args.json:
        print(json.dumps(result if args.mode == "real" else {k: result[k] for k in (
            "false_keep_rate", "worse_keep_rate", "power_1sigma", "power_2sigma", "mean_seeds_null")}))  # fmt: skip
    elif args.mode == "simulate":
        print(markdown(result))
        print(json.dumps({k: result[k] for k in ("false_keep_rate", "worse_keep_rate", "power_1sigma",
                                                 "power_2sigma", "mean_seeds_null", "met")}))  # fmt: skip
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
