"""How fast does `evolve serve` answer on a big run? N synthetic individuals in a real workspace.

    python bench/web_scale.py [--individuals 5000] [--repeats 5] [--browser] [--json docs/bench/web_scale.json]

The store is bench/analysis_scale.py's (the real schema, synthetic children on four islands, merge
crossovers, crashes, refusals, re-evaluations, a validation of the top 20), put in a workspace made
by `evolve init`. Each of the view's JSON answers is timed in this process (`WebView`, the JSON
encoding included) cold (a new view: nothing cached, as after the store changed) and warm (the
store unchanged: cached frames). With --browser, headless Chromium opens /tree of a real
`evolve serve` and the time until the tree is drawn is measured. There is no target; the figures
say up to which size the view stays pleasant. A 48-hour run on 8 GPUs at 12 experiments an hour
each makes about 4,600 individuals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis_scale import build_store, timed  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def endpoints(view, run: str, child: str) -> dict:
    from analysis.web.individual import individual

    return {
        "state": lambda: view.state(),
        "runs": lambda: view.runs(),
        "overview": lambda: view.overview(run),
        "progress": lambda: view.progress(run),
        "tree": lambda: view.tree(run),
        "operators": lambda: view.operators(run),
        "transfer": lambda: view.transfer(run),
        "individual": lambda: individual(view, run, child),
    }


def browser_draw(root: Path, repeats: int) -> list[float]:
    """Seconds from opening /tree to the drawn tree, in headless Chromium over a real server."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        sys.exit("error: --browser needs chromium on PATH")
    cmd = [
        sys.executable,
        "-c",
        "from autoevolve.cli import main; main()",
        "serve",
        "-w",
        str(root),
        "--port",
        "0",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0]
        out = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            for _ in range(repeats):
                page.goto(url + "tree")
                page.wait_for_function("() => window.autoevolve && autoevolve.firstDraw", timeout=600_000)
                out.append(page.evaluate("() => autoevolve.firstDraw") / 1000)
            browser.close()
        return out
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--individuals", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also time the tree's drawing in Chromium")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    from analysis.web.views import WebView
    from genome.workspace import init_workspace

    work = Path(tempfile.mkdtemp(prefix="web-scale-"))
    ws = init_workspace(work / "ws", run="bench", profile="h100")
    start = time.perf_counter()
    build_store(ws.state_dir / "evolve.db", args.individuals)
    print(f"built {args.individuals:,} individuals in {time.perf_counter() - start:.1f} s in {ws.root}")
    child = f"g{args.individuals - 1:04d}"
    load = os.getloadavg()[0]
    results: dict[str, dict] = {}
    warm_view = WebView(ws.root)
    for name in endpoints(warm_view, "bench", child):
        cold = timed(
            lambda name=name: json.dumps(endpoints(WebView(ws.root), "bench", child)[name]()), args.repeats
        )
        fn = endpoints(warm_view, "bench", child)[name]
        fn()
        warm = timed(lambda fn=fn: json.dumps(fn()), args.repeats)
        size = len(json.dumps(fn()))
        results[name] = {"cold_wall": statistics.median(cold[0]), "cold_cpu": statistics.median(cold[1]),
                         "warm_wall": statistics.median(warm[0]), "warm_cpu": statistics.median(warm[1]),
                         "bytes": size}  # fmt: skip
    if args.browser:
        draws = browser_draw(ws.root, max(1, args.repeats // 2))
        results["tree drawn in Chromium"] = {"cold_wall": statistics.median(draws), "runs": len(draws)}
    print(f"\nload average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs\n")
    print(f"{'answer':<24} {'cold wall':>9} {'cold cpu':>9} {'warm wall':>9} {'warm cpu':>9} {'JSON KB':>8}")
    for name, r in results.items():
        cells = [
            f"{r[k]:>9.3f}" if k in r else f"{'':>9}"
            for k in ("cold_wall", "cold_cpu", "warm_wall", "warm_cpu")
        ]
        print(f"{name:<24} {' '.join(cells)} {r['bytes'] / 1024 if 'bytes' in r else 0:>8.0f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": "python bench/web_scale.py " + " ".join(sys.argv[1:]), "individuals": args.individuals,
            "repeats": args.repeats, "load_average": load, "results": results,
        }, indent=2) + "\n")  # fmt: skip
        print(f"\nwrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
