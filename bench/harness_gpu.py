"""The harness on a GPU: the honest baseline beside the budget-gaming variants, and the overhead per run.

    python bench/harness_gpu.py --data DIR --depth 8 --budget 30 --out harness_gpu.json [--old OLD]

Every run goes through `trainer.run` exactly as the search runs it (bubblewrap, the data server,
the separate evaluator). The variants are edits of the baseline that tried to train more than the
budget under the earlier harness (which took train.py's own clock): 45 untimed warm-up steps
instead of 2, training again on kept batches after the data ended, and keeping batches back to
train past the budget. `--old DIR` also runs the honest baseline under the earlier harness (a
checkout of it, run in a subprocess with that folder first on PYTHONPATH) for the overhead, cold
and warm, side by side. The table shows status, training seconds and tokens (the harness's),
optimizer steps, val_bpb, and the wall clock over the budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASELINE = REPO / "genome" / "baseline" / "train.py"

WARMUP_45 = (
    ("for x, y in loader.warmup(steps=2 if cuda else 1):", "for x, y in loader.warmup(steps=45):"),
    (
        "        train_model(x, y).backward()\n",
        "        train_model(x, y).backward()\n    for opt in optimizers:\n        opt.step()\n"
        "    train_model.zero_grad(set_to_none=True)\n",
    ),
)
AFTER_END = (
    (
        "    micro = i % accum\n",
        "    micro = i % accum\n    kept = globals().setdefault('kept', [])\n    kept.append((x, y))\n",
    ),
    (
        "prepare.report(\n",
        "import time\nend = time.time() + 15\nwhile time.time() < end:\n    for x, y in kept[-accum:]:\n"
        "        with amp():\n            train_model(x, y).backward()\n    for opt in optimizers:\n"
        "        opt.step()\n    train_model.zero_grad(set_to_none=True)\nprepare.report(\n",
    ),
)
HOARD = (
    (
        "for i, (x, y) in enumerate(loader):\n",
        "kept = [next(iter(loader)) for _ in range(accum)]\nimport time\nt = time.time()\n"
        "while time.time() - t < 2 * cfg.budget:\n    for x, y in kept:\n        with amp():\n"
        "            train_model(x, y).backward()\n    for opt in optimizers:\n        opt.step()\n"
        "    train_model.zero_grad(set_to_none=True)\nfor i, (x, y) in enumerate(loader):\n",
    ),
)
VARIANTS = {
    "honest (cold cache)": (),
    "honest (warm cache)": (),
    "45 untimed warm-up steps": WARMUP_45,
    "trains again after the data ended": AFTER_END,
    "keeps batches back, trains past the budget": HOARD,
}

OLD_RUN = """
import json, sys
import trainer
r = trainer.run(sys.argv[1], depth=int(sys.argv[2]), budget=float(sys.argv[3]), seed=42, devices=(0,),
                profile=sys.argv[4], data_dir=sys.argv[5], log_dir=sys.argv[6])
print("RESULT " + json.dumps(r.to_dict()))
"""


def edited(edits) -> str:
    source = BASELINE.read_text()
    for old, new in edits:
        assert old in source, old
        source = source.replace(old, new, 1)
    return source


def row(
    label: str, harness: str, status: str, reason: str, metrics: dict, wall: float, budget: float
) -> dict:
    return dict(
        run=label, harness=harness, status=status, reason=reason[:120],
        training_s=metrics.get("training_seconds"), training_tokens=metrics.get("training_tokens"),
        steps=metrics.get("num_steps"), val_bpb=metrics.get("val_bpb"), wall_s=round(wall, 1),
        over_budget_s=round(wall - budget, 1), handover_s=metrics.get("handover_seconds"),
        mfu=metrics.get("mfu_percent"),
    )  # fmt: skip


def run_new(label, source, args, work: Path) -> dict:
    import trainer

    tree = work / label.replace(" ", "-").replace("(", "").replace(")", "")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    (tree / "train.py").write_text(source)
    result = trainer.run(
        tree, depth=args.depth, budget=args.budget, seed=42, devices=args.devices, profile=args.profile,
        data_dir=args.data, log_dir=work / "logs" / tree.name, budget_unit="seconds",
    )  # fmt: skip
    print(f"--- {label}: {result.status.value} ({result.reason})", flush=True)
    print(Path(result.log_path).read_text()[-2500:], flush=True)
    return row(
        label, "new", result.status.value, result.reason, result.metrics, result.wall_seconds, args.budget
    )


def run_old(label, args, work: Path) -> dict:
    tree = work / "old-tree"
    tree.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.old / "genome" / "baseline" / "train.py", tree / "train.py")
    env = {**os.environ, "PYTHONPATH": f"{args.old}:{os.environ.get('PYTHONPATH', '')}"}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "old-cache" / "inductor")
    env["TRITON_CACHE_DIR"] = str(work / "old-cache" / "triton")
    for d in ("inductor", "triton"):
        (work / "old-cache" / d).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", OLD_RUN, str(tree), str(args.depth), str(args.budget), args.profile,
           str(args.data), str(work / "logs" / label.replace(" ", "-"))]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=args.old)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:], flush=True)
        return row(label, "old", "error", proc.stderr[-200:], {}, time.time() - t0, args.budget)
    r = json.loads(lines[-1][len("RESULT ") :])
    print(f"--- {label} (old harness): {r['status']} ({r['reason']})", flush=True)
    return row(label, "old", r["status"], r["reason"], r["metrics"], r["wall_seconds"], args.budget)


def markdown(rows: list[dict]) -> str:
    head = "| run | harness | status | training s | training tokens | steps | val_bpb | wall s | over budget s | handover s |"
    lines = [head, "|" + "---|" * 10]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['harness']} | {r['status']} | {fmt(r['training_s'], '.2f')} | {fmt(r['training_tokens'], ',')}"
            f" | {fmt(r['steps'], '')} | {fmt(r['val_bpb'], '.4f')} | {r['wall_s']} | {r['over_budget_s']} | {fmt(r['handover_s'], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="a prepared dataset (h100-small on the shared corpus)"
    )
    ap.add_argument("--profile", default="h100-small")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of training window")
    ap.add_argument(
        "--old", type=Path, default=None, help="a checkout of the earlier harness, for the overhead"
    )
    ap.add_argument(
        "--only", default="", help="comma-separated run labels' first words to run (default: all)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/harness-gpu"))
    ap.add_argument("--out", type=Path, default=Path("harness_gpu.json"))
    ap.add_argument("--cpu", action="store_true", help="a smoke test on the CPU (tiny profile)")
    args = ap.parse_args(argv)
    import torch

    args.devices = ("cpu",) if args.cpu else (0,)
    card = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    os.environ.setdefault("EVOLVE_COMPILE_CACHE", str(args.work / "compile-cache"))
    rows = []
    if args.old is not None:
        rows += [
            run_old("honest (cold cache)", args, args.work),
            run_old("honest (warm cache)", args, args.work),
        ]
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    for label, edits in VARIANTS.items():
        if only and not any(label.startswith(w) for w in only):
            continue
        rows.append(run_new(label, edited(edits), args, args.work))
        args.out.write_text(json.dumps({"card": card, "rows": rows}, indent=2))
    table = markdown(rows)
    meta = f"{dt.date.today()} | {card} | torch {torch.__version__} | depth {args.depth}, {args.budget:g} s budget, {args.profile}"
    print(f"\n{meta}\n\n{table}", flush=True)
    args.out.write_text(json.dumps({"date": str(dt.date.today()), "card": card, "torch": torch.__version__,
                                    "depth": args.depth, "budget_s": args.budget, "profile": args.profile,
                                    "rows": rows}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
