"""Throughput of the baseline train.py: tokens/s, MFU, peak memory and start-up overhead per depth.

Runs on the GPU machine (and, for a smoke test, on CPU with `--profile tiny`):

    python bench/throughput.py --profile h100-small --source local:../shared/data --depths 8,12,24 \\
        --budget 60 --full-depth 12 --full-budget 300 --repeat-warm --out bench.json

(`h100-small` is h100 with a 768K-token evaluation: ../shared/data's validation split is too small
for h100's 20M. The shared corpus folder is first laid out by bench/shared_corpus.py.)

It prepares the dataset if needed, measures a bf16 matmul (8192^3) in this process as a roofline,
then runs the baseline once per depth through `trainer.run`, exactly as the search does (sandbox,
the harness's clock, the separate evaluator), and prints a Markdown table. tokens/s is the
harness's: training tokens served over the training window. The compile caches live under
`--cache-dir` (one per genome, `EVOLVE_COMPILE_CACHE`), so `--repeat-warm` (the first depth run
twice, on an emptied cache) shows the cold and the warm start-up cost. `--budget` is in the
profile's unit (seconds on h100, tokens on tiny).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout too, not only when installed

from shared_corpus import lay_out  # noqa: E402  (bench/ is on sys.path when run as a script)

from prepare.profiles import evolve_home, get_profile  # noqa: E402

BASELINE = REPO / "genome" / "baseline" / "train.py"
DATASHEET_FLOPS = 989e12  # H100 SXM, bf16 dense


@dataclass(frozen=True)
class Row:
    label: str
    depth: int
    budget: float
    status: str
    params_M: float = 0.0
    tokens_per_s: float = 0.0
    mfu_datasheet: float = 0.0  # percent of 989 TFLOP/s per device
    mfu_measured: float = 0.0  # percent of the matmul peak measured here
    peak_mem_mb: float = 0.0
    val_bpb: float = float("nan")
    training_s: float = 0.0
    wall_s: float = 0.0
    num_steps: int = 0
    log: str = ""


def measure_matmul(device: str, n: int = 8192, iters: int = 50) -> float:
    """Achieved TFLOP/s of an n^3 matmul (bf16 on CUDA, float32 on CPU), the roofline for MFU."""
    if device.startswith("cuda"):
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        n, iters = 1024, 10  # the CPU path is a smoke test, not a measurement
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - t0
    return 2 * n**3 * iters / seconds / 1e12


def unpack_corpus(src: Path, dst: Path) -> Path:
    """The shared corpus folder `src` (with gutenberg_manifest.tsv) laid out in `dst` once, by
    bench/shared_corpus.py: books cut into ~2,000-character documents, the corpus's own split."""
    if (dst / "DONE").is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    counts = lay_out(src, dst)
    (dst / "DONE").write_text(json.dumps(counts))
    return dst


def prepare_data(profile_name: str, source: str | None) -> Path:
    from prepare.pipeline import prepare_dataset

    if source and source.startswith("local:"):
        folder = Path(source[len("local:") :]).expanduser().resolve()
        if (folder / "gutenberg_manifest.tsv").is_file():
            source = "local:" + str(unpack_corpus(folder, evolve_home() / "bench-corpus" / folder.name))
    manifest = prepare_dataset(get_profile(profile_name), source=source)
    return Path(manifest.path)


def run_baseline(
    label: str, depth: int, budget: float, args: argparse.Namespace, data: Path, matmul_tflops: float
) -> Row:
    """One run of the baseline through trainer.run; wall time is the trainer's, start to score."""
    import trainer

    logs = args.out.with_suffix("").parent / (args.out.stem + "-logs") / label
    tree = logs.parent / f"{label}-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    shutil.copy(BASELINE, tree / "train.py")
    os.environ["EVOLVE_COMPILE_CACHE"] = str(args.cache_dir)
    devices = ("cpu",) if not (args.device or get_profile(args.profile).device).startswith("cuda") else (0,)
    print(f"\n### {label}: depth {depth}, budget {budget:g} -> {logs}", flush=True)
    result = trainer.run(
        tree, depth=depth, budget=budget, seed=args.seed, devices=devices, profile=args.profile,
        data_dir=data, log_dir=logs,
    )  # fmt: skip
    print(Path(result.log_path).read_text()[-3000:], flush=True)
    if not result.ok:
        return Row(label, depth, budget, status=f"{result.status.value}: {result.reason}", wall_s=result.wall_seconds,
                   log=str(result.log_path))  # fmt: skip
    m = result.metrics
    mfu = float(m.get("mfu_percent", 0.0))
    return Row(
        label,
        depth,
        budget,
        status="ok",
        params_M=m["num_params_M"],
        tokens_per_s=m["training_tokens"] / max(m["training_seconds"], 1e-9),
        mfu_datasheet=mfu,
        mfu_measured=100 * mfu / 100 * DATASHEET_FLOPS / (matmul_tflops * 1e12) if matmul_tflops else 0.0,
        peak_mem_mb=float(m.get("peak_vram_mb", 0.0)),
        val_bpb=result.val_bpb,
        training_s=m["training_seconds"],
        wall_s=result.wall_seconds,
        num_steps=int(m["num_steps"]),
        log=str(result.log_path),
    )


def markdown(rows: list[Row], matmul_tflops: float) -> str:
    head = (
        f"| run | depth | params (M) | tokens/s | MFU vs 989 TFLOP/s | MFU vs matmul ({matmul_tflops:.3g} TFLOP/s)"
        " | peak mem (GiB) | val_bpb | training s | wall s | steps |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if r.status != "ok":
            lines.append(
                f"| {r.label} | {r.depth} | {r.status} (see {r.log}) |" + " |" * 6 + f" {r.wall_s:.1f} | |"
            )
            continue
        lines.append(
            f"| {r.label} | {r.depth} | {r.params_M:.1f} | {r.tokens_per_s:,.0f} | {r.mfu_datasheet:.1f}%"
            f" | {r.mfu_measured:.1f}% | {r.peak_mem_mb / 1024:.1f} | {r.val_bpb:.4f} | {r.training_s:.1f}"
            f" | {r.wall_s:.1f} | {r.num_steps} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="h100", help="prepare profile (h100, or tiny for a CPU smoke test)")
    p.add_argument(
        "--source", default=None, help="data source, e.g. local:../shared/data (profile default if unset)"
    )
    p.add_argument(
        "--data", type=Path, default=None, help="an already prepared dataset dir (skips preparing)"
    )
    p.add_argument("--depths", default="8,12,24", help="comma-separated depths, one run each")
    p.add_argument("--budget", type=float, default=60.0, help="budget of each depth run (the profile's unit)")
    p.add_argument("--full-depth", type=int, default=12, help="depth of the full run")
    p.add_argument("--full-budget", type=float, default=0.0, help="budget of one extra full run (0 = none)")
    p.add_argument("--repeat-warm", action="store_true", help="empty the cache, run the first depth twice")
    p.add_argument("--cache-dir", type=Path, default=None, help="inductor/Triton caches (shared by all runs)")
    p.add_argument("--device", default=None, help="EVOLVE_DEVICE for the runs (profile default if unset)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=Path("bench-throughput.json"), help="JSON results")
    args = p.parse_args(argv)
    args.cache_dir = args.cache_dir or evolve_home() / "compile-cache"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    device = args.device or get_profile(args.profile).device
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    data = args.data or prepare_data(args.profile, args.source)
    print(f"data: {data} ({time.time() - started:.0f}s to prepare or find)", flush=True)
    matmul = measure_matmul(device)
    print(f"matmul peak on {card}: {matmul:.1f} TFLOP/s", flush=True)

    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    plan: list[tuple[str, int, float]] = []
    if args.repeat_warm:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
        plan += [
            (f"d{depths[0]}-cold", depths[0], args.budget),
            (f"d{depths[0]}-warm", depths[0], args.budget),
        ]
        depths = depths[1:]
    plan += [(f"d{d}", d, args.budget) for d in depths]
    if args.full_budget > 0:
        plan.append((f"d{args.full_depth}-full", args.full_depth, args.full_budget))
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    rows = [run_baseline(label, depth, budget, args, data, matmul) for label, depth, budget in plan]
    table = markdown(rows, matmul)
    command = "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])])
    print(f"\n{dt.date.today()} | {card} | torch {torch.__version__} | `{command}`\n\n{table}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(date=str(dt.date.today()), card=card, torch=torch.__version__, command=command)
    doc = dict(
        meta, profile=args.profile, data=str(data), matmul_tflops=matmul, rows=[asdict(r) for r in rows]
    )
    args.out.write_text(json.dumps(doc, indent=2))
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
