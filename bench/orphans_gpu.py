"""No orphans on a GPU: SIGKILL `evolve run` while its run trains there; the GPU is free in seconds.

One workspace (`evolve init`, the baseline train.py, run `chaos` so that bench/chaos.py's checks
apply), then one trial per isolation mode (`--isolation bwrap,none`): start `evolve run`, wait
until the baseline's run has logged its first training step (and, on a GPU, shows in
`nvidia-smi --query-compute-apps`), let it train `--kill-after` seconds more, note every process
below the controller and every process the trainer tagged, SIGKILL the controller, then poll for
`--wait` seconds until no compute process is on the GPU and none of the noted or tagged processes
lives. Each trial after the first is itself a resume of the run the previous one killed. Last, an
`evolve run` that runs to the end (the baseline's seeds, `--max-experiments 0`), then
bench/chaos.py's checks of the store, git and the pool, and `evolve doctor`. The workspace's
train.py is the baseline with torch.compile off (no run pays a cold compile) and 16 rows per
micro-step (`--device-batch`; eager activations of 64 could outgrow an 80 GB card): this checks
what a SIGKILL leaves, not the speed.

    python bench/orphans_gpu.py --profile h100-small --source local:/tmp/corpus --gpus 0 --budget 30 \\
        --out orphans_gpu.json                      # on a GPU host (bench/orphans_gpu.sh on the device)
    python bench/orphans_gpu.py --profile tiny --source builtin --gpus cpu:1 --budget 4000000 \\
        --kill-after 2 --out /tmp/orphans_cpu.json   # the same on CPU (no nvidia-smi: processes only)

Where nvidia-smi is missing, the GPU fields are null and only the processes are watched. The
figures: seconds from the SIGKILL until the GPU shows no compute process, until none of the run's
processes lives, and the pids still alive after `--wait` seconds (killed by this script then).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout too, not only when installed
sys.path.insert(0, str(REPO / "bench"))

import chaos  # noqa: E402

from genome.repo import git_process  # noqa: E402
from genome.workspace import open_workspace  # noqa: E402
from trainer.process import proc_stat  # noqa: E402

EVOLVE = [sys.executable, "-c", "from evolve.cli import main; main()"]
SMI_APPS = [
    "nvidia-smi",
    "--query-compute-apps=pid,process_name,used_memory",
    "--format=csv,noheader,nounits",
]


def log(msg: str) -> None:
    print(f"[orphans {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- what is running ---------------------------------------------------------------------------------


def gpu_apps() -> list[dict] | None:
    """Compute processes on the GPUs (pid, name, MiB), None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(SMI_APPS, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    apps = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            apps.append(
                {"pid": int(parts[0]), "name": parts[1], "mib": int(parts[2]) if parts[2].isdigit() else None}
            )
    return apps


def gpu_info() -> dict | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20,
    ).stdout.strip().splitlines()  # fmt: skip
    keys = ("name", "driver", "memory_total", "memory_used")
    cards = [dict(zip(keys, (p.strip() for p in line.split(",")), strict=False)) for line in out]
    return {"cards": cards, "name": cards[0]["name"] if cards else None}


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): a pid reused is not it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()[:160]
        )
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(entry)) is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def tagged(ws) -> list[int]:
    """Live processes the trainer tagged that work in this workspace's runs (other workspaces' runs
    on a shared host are not ours to watch, nor to kill)."""
    return chaos.leftover_runs(ws)


def still_alive(noted: dict[int, str | None]) -> list[int]:
    """The noted processes (pid -> start time) that still live, not zombies, not a reused pid."""
    out = []
    for pid, started in noted.items():
        stat = proc_stat(pid)
        if stat is not None and stat[0] != "Z" and start_time(pid) == started:
            out.append(pid)
    return sorted(out)


def run_logs(ws) -> set[Path]:
    return set((ws.state_dir / "logs").rglob("run.log")) if (ws.state_dir / "logs").is_dir() else set()


def training_log(ws, before: set[Path]) -> Path | None:
    """A run.log that appeared since `before` and has logged a training step."""
    for path in sorted(run_logs(ws) - before):
        try:
            if "step 00000" in path.read_text(errors="replace"):
                return path
        except OSError:
            continue
    return None


def steps_logged(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line.startswith("step "))
    except OSError:
        return 0


def events(ws, kind: str) -> list[dict]:
    db = ws.state_dir / chaos.DB_FILE
    if not db.exists():
        return []
    with chaos._connect(db) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE run = ? AND kind = ? ORDER BY id", (chaos.RUN, kind)
        )
        return [json.loads(r[0]) for r in rows]


# --- one trial ---------------------------------------------------------------------------------------


def controller(ws, args, env: dict[str, str], log_file: Path) -> subprocess.Popen:
    cmd = [*EVOLVE, "run", "-w", str(ws.root), "--gpus", args.gpus, "--max-experiments", "0",
           "--baseline-seeds", str(args.baseline_seeds), "--interval", "5"]  # fmt: skip
    out = open(log_file, "ab")
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def trial(ws, args, isolation: str, env: dict[str, str], logs: Path) -> dict:
    env = {**env, "EVOLVE_ISOLATION": isolation}
    before = run_logs(ws)
    t_start = time.monotonic()
    proc = controller(ws, args, env, logs / f"run-{isolation}.log")
    log(f"isolation {isolation}: evolve run started (pid {proc.pid})")
    seen, apps, seen_at = None, None, None
    deadline = t_start + args.start_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        seen = training_log(ws, before)
        apps = gpu_apps()
        if seen is not None and seen_at is None:
            seen_at = time.monotonic()
        # training, and on the GPU (or 20 s of training without nvidia-smi showing it: noted below)
        if seen is not None and (apps is None or apps or time.monotonic() - seen_at > 20):
            break
        time.sleep(0.25)
    else:
        proc.kill()
        proc.wait()
        raise SystemExit(f"isolation {isolation}: no training step within {args.start_timeout:g} s "
                         f"(controller rc {proc.returncode}); see {logs}/run-{isolation}.log")  # fmt: skip
    to_training = time.monotonic() - t_start
    log(f"training after {to_training:.1f} s ({seen.parent.name}); {args.kill_after:g} s more, then SIGKILL")
    time.sleep(args.kill_after)
    apps = gpu_apps()
    below = descendants(proc.pid)
    tags = tagged(ws)
    noted = {pid: start_time(pid) for pid in set(below) | set(tags)}
    processes = [{"pid": pid, "cmd": cmdline(pid)} for pid in sorted(noted)]
    foreign = sorted({a["pid"] for a in apps or []} - set(noted))  # on the GPU, not below the controller
    steps = steps_logged(seen)

    proc.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    proc.wait()
    gpu_free = procs_gone = None
    while time.monotonic() - t_kill < args.wait:
        now = time.monotonic() - t_kill
        on_gpu = gpu_apps()
        if gpu_free is None and (on_gpu is None or not on_gpu):
            gpu_free = round(now, 2)
        if procs_gone is None and not still_alive(noted) and not tagged(ws):
            procs_gone = round(now, 2)
        if gpu_free is not None and procs_gone is not None:
            break
        time.sleep(0.1)
    left_gpu = [a["pid"] for a in gpu_apps() or []]
    left = sorted(set(still_alive(noted)) | set(tagged(ws)))
    for pid in left:  # clean up after a failure (only this run's processes), so the next trial starts clean
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    card = gpu_info()
    snap = chaos.snapshot(ws)
    result = {
        "isolation": isolation,
        "seconds_to_first_step": round(to_training, 1),
        "steps_logged_before_kill": steps,
        "gpu_apps_at_kill": apps,
        "processes_at_kill": processes,
        "seconds_until_gpu_free": None if apps is None else gpu_free,
        "seconds_until_no_process": procs_gone,
        "leftover_pids": left,
        "gpu_memory_used_after": [c["memory_used"] for c in card["cards"]] if card else None,
        "leftover_gpu_pids": left_gpu,
        "gpu_pids_not_of_this_run_at_kill": foreign,
        "left_running_in_store": list(snap.running),
    }
    on_gpu = "no nvidia-smi" if apps is None else f"GPU apps {apps}, GPU free after {gpu_free} s"
    log(f"isolation {isolation}: {len(processes)} processes at the kill, {on_gpu}; "
        f"no process after {procs_gone} s, leftovers {left}")  # fmt: skip
    return result


# --- the whole bench ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="h100-small")
    ap.add_argument("--source", default="local:/tmp/corpus")
    ap.add_argument("--gpus", default="0", help="evolve run's --gpus: one device (0, or cpu:1)")
    ap.add_argument("--budget", type=float, default=30.0, help="in the profile's unit (seconds or tokens)")
    ap.add_argument("--baseline-seeds", type=int, default=2)
    ap.add_argument("--isolation", default="bwrap,none", help="one trial per mode, in this order")
    ap.add_argument("--resume-isolation", default="bwrap")
    ap.add_argument("--kill-after", type=float, default=5.0, help="seconds of training before the SIGKILL")
    ap.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the GPU to be free")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--resume-timeout", type=float, default=300.0)
    ap.add_argument(
        "--compile", action="store_true", help="keep torch.compile (default: off, no cold compile)"
    )
    ap.add_argument("--device-batch", type=int, default=16, help="train.py's DEVICE_BATCH_SIZE (0: keep 64)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/orphans"))
    ap.add_argument("--out", type=Path, default=Path("orphans_gpu.json"))
    args = ap.parse_args()

    t0 = time.monotonic()
    shutil.rmtree(args.workdir, ignore_errors=True)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "EVOLVE_ISOLATION"}
    if args.gpus.startswith("cpu"):
        env.setdefault("OMP_NUM_THREADS", "1")
    prep = subprocess.run([*EVOLVE, "prepare", "--profile", args.profile, "--source", args.source],
                          env=env, capture_output=True, text=True)  # fmt: skip
    if prep.returncode != 0:
        raise SystemExit(f"evolve prepare failed:\n{(prep.stdout + prep.stderr)[-3000:]}")
    log(f"prepared in {time.monotonic() - t0:.1f} s")
    train = (REPO / "genome" / "baseline" / "train.py").read_text()
    if not args.compile:
        train = train.replace("\nCOMPILE = True", "\nCOMPILE = False", 1)
    if args.device_batch:  # eager activations of 64 rows at depth 12 could outgrow an 80 GB card
        train = train.replace("\nDEVICE_BATCH_SIZE = 64", f"\nDEVICE_BATCH_SIZE = {args.device_batch}", 1)
    (args.workdir / "train.py").write_text(train)
    root = args.workdir / "ws"
    init = subprocess.run(
        [*EVOLVE, "init", str(root), "--run", chaos.RUN, "--profile", args.profile, "--source", args.source,
         "--budget", f"{args.budget:g}", "--train", str(args.workdir / "train.py")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if init.returncode != 0:
        raise SystemExit(f"evolve init failed:\n{(init.stdout + init.stderr)[-3000:]}")
    ws = open_workspace(root)
    user_status = git_process(ws.root, "status", "--porcelain").stdout.decode().strip()
    result: dict = {
        "bench": "orphans_gpu",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": _torch_version(),
        "gpu": gpu_info(),
        "profile": args.profile,
        "source": args.source,
        "gpus": args.gpus,
        "budget": args.budget,
        "compile": args.compile,
        "device_batch_size": args.device_batch or 64,
        "kill_after_s": args.kill_after,
        "wait_s": args.wait,
        "trials": [],
    }
    for mode in [m.strip() for m in args.isolation.split(",") if m.strip()]:
        result["trials"].append(trial(ws, args, mode, env, logs))

    log(f"resume (isolation {args.resume_isolation}) to the end")
    t_resume = time.monotonic()
    renv = {**env, "EVOLVE_ISOLATION": args.resume_isolation}
    proc = controller(ws, args, renv, logs / "run-resume.log")
    try:
        rc = proc.wait(args.resume_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    resume_s = time.monotonic() - t_resume
    problems = chaos.check(ws, user_status=user_status)
    doctor = subprocess.run([*EVOLVE, "doctor", "-w", str(ws.root)], env=env, capture_output=True, text=True)
    with chaos._connect(ws.state_dir / chaos.DB_FILE) as conn:
        evals = [dict(r) for r in conn.execute(
            "SELECT individual, seed, status, val_bpb, isolation FROM evaluations ORDER BY seed")]  # fmt: skip
        sessions = [dict(r) for r in conn.execute("SELECT id, ended, stop_reason FROM sessions ORDER BY id")]
    killed_events = events(ws, "leftover_runs_killed")
    result["resume"] = {
        "rc": rc,
        "seconds": round(resume_s, 1),
        "problems": problems,
        "doctor_rc": doctor.returncode,
        "doctor_tail": (doctor.stdout + doctor.stderr).strip().splitlines()[-6:],
        "evaluations": evals,
        "sessions": sessions,
        "resume_events": events(ws, "resume"),
        "leftover_runs_killed_events": killed_events,
        "gpu_apps_after": gpu_apps(),
    }
    result["resume_ok"] = rc == 0 and not problems and doctor.returncode == 0 and not killed_events
    result["leftover_pids"] = sorted({p for t in result["trials"] for p in t["leftover_pids"]})
    frees = [t["seconds_until_gpu_free"] for t in result["trials"]]
    gones = [t["seconds_until_no_process"] for t in result["trials"]]
    result["seconds_until_gpu_free"] = None if any(f is None for f in frees) else max(frees)
    result["seconds_until_no_process"] = None if any(g is None for g in gones) else max(gones)
    result["ok"] = bool(
        result["resume_ok"] and not result["leftover_pids"] and result["seconds_until_no_process"] is not None
    )
    result["wall_s"] = round(time.monotonic() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"resume rc {rc} in {resume_s:.1f} s, problems {problems}, doctor rc {doctor.returncode}; "
        f"ok {result['ok']}; wrote {args.out}")  # fmt: skip
    if not result["ok"]:
        sys.exit(1)


def _torch_version() -> str | None:
    """torch's version, read from its metadata: importing it here could put this process on the GPU."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
