"""`run`: one genome at one (depth, budget, seed) on one device or a group of devices, judged.

The steps: resolve the profile, devices and data; copy the worktree's files into a private run
folder; give the run a private copy of its genome's compile cache; start the data server (the
harness's clock, trainer.dataserver); start `python train.py` (or torchrun) in its own
namespaces (trainer.isolation) with a scrubbed environment; when the graph arrives, start the
evaluator (trainer.evaluation) in namespaces of its own; when the training process is gone and
the weights are in, let the evaluator score them; keep the compile cache as it was when the
window opened; judge (trainer.judge). Problems with the request raise TrainerError; anything the
run itself does is a RunResult.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import prepare
from prepare.contract import HIDDEN_VAR, READABLE_VAR, SECRET_VAR, WRITABLE_VAR
from prepare.errors import PrepareError
from prepare.integrity import package_hash
from prepare.profiles import BUDGET_UNITS, Profile, dataset_dir, evolve_home, get_profile
from prepare.stream import STREAM_VAR

from . import isolation
from .compile_cache import CompileCache, tree_key
from .dataserver import DataServer
from .env import build_env
from .errors import TrainerError
from .evaluation import Evaluator
from .judge import judge, tail_lines
from .process import supervise
from .result import RunResult, Status

LOG_LIMIT = 50 * 2**20  # bytes of log kept per run; the rest is drained and dropped
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL at the deadline
# Seconds a run may go on once its weights are in; then it is stopped, no fault. Nothing it does
# after the handover counts, and the interpreter's (and CUDA's) teardown alone takes seconds.
EXIT_GRACE = 1.0
WORKTREE_LIMIT = 256 * 2**20  # bytes of worktree files copied into a run
INSIDE = Path("/evolve")  # where a sandboxed run sees its own folders

# Where `import prepare` lands for the child and what its interpreter reads, asked of the child's
# own interpreter, cwd and environment: a prepare/ folder in the worktree would shadow the real one.
_PROBE = (
    "import importlib.util, json, sys; sys.path[0] = sys.argv[1]; "
    "s = importlib.util.find_spec('prepare'); "
    "loc = s.submodule_search_locations[0] if s and s.submodule_search_locations else ''; "
    "print(json.dumps({'prepare': loc, 'path': [p for p in sys.path if p], "
    "'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]}))"
)

# The child's first code: import prepare (which arms the tripwire), then run the script as
# __main__ with its own folder on sys.path, as `python train.py` would. No .pyc writes.
LAUNCH = (
    "import os, runpy, sys; sys.dont_write_bytecode = True; import prepare; "
    "script = os.path.abspath(sys.argv[1]); sys.argv = sys.argv[1:]; "
    "sys.path[0] = os.path.dirname(script); runpy.run_path(script, run_name='__main__')"
)


def normalize_devices(devices: Sequence[int | str] | int | str) -> tuple[str, ...]:
    """("cpu", ...) or GPU indices as strings; mixing the two, or a GPU twice, is an error."""
    if isinstance(devices, (str, int)):
        devices = (devices,)
    out = tuple(str(d).strip().lower() for d in devices)
    if not out:
        raise TrainerError("devices is empty: pass GPU indices like (0, 1) or ('cpu',)")
    if all(d == "cpu" for d in out):
        return out
    if all(d.isdigit() for d in out):
        if len(set(out)) != len(out):
            raise TrainerError(f"devices {out} name a GPU twice; each GPU serves one process")
        return out
    raise TrainerError(f"devices {out} must be all GPU indices or all 'cpu'")


def _resolve_profile(profile: str | Profile | None) -> Profile:
    name = profile.name if isinstance(profile, Profile) else profile
    try:
        known = get_profile(name)
    except PrepareError as exc:
        raise TrainerError(str(exc)) from None
    # train.py only receives the name, so a Profile edited in memory would not reach it
    if isinstance(profile, Profile) and profile != known:
        raise TrainerError(
            f"profile {name!r} differs from prepare's; train.py can only run prepare's profiles"
        )
    return known


def _probe(python: str, cwd: Path, script_dir: Path, env: dict[str, str]) -> dict | None:
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, str(script_dir)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("prepare") else None


def _commit(worktree: Path) -> str | None:
    """HEAD of the worktree when it is the root of a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=worktree,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != worktree.resolve():
        return None
    return lines[1]


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def gpu_name(index: str) -> str:
    """The card's name, or "cpu"; torch is imported only when a GPU was asked for."""
    if index == "cpu":
        return "cpu"
    try:
        import torch

        return torch.cuda.get_device_name(int(index))
    except Exception:  # no driver here: still record that it was meant to be a GPU
        return "cuda"


@functools.cache
def cpu_name() -> str:
    """This host's CPU model ("AMD EPYC 9654 96-Core Processor"), "" when it cannot be read. Under a
    time budget a CPU run compares only with runs on the same model."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or ""


def _command(python: str, script: str, nproc: int) -> list[str]:
    if nproc == 1:
        return [python, "-c", LAUNCH, script]
    return [
        python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "--no-python", python, "-c", LAUNCH, script,
    ]  # fmt: skip


def harness_paths(worktree: Path, data: Path, logs: Path, isolated: bool) -> list[Path]:
    """Host paths that are the harness's: the repository's git directory, the workspace's `.evolve`
    (store, worktrees, logs), the run's log folder, and (isolated) the prepared data. They are not
    in the sandbox; the tripwire names an attempt on them for what it is."""
    found = [logs, *([data] if isolated else [])]
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=worktree, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return found
    if proc.returncode == 0 and proc.stdout.strip():
        common = Path(proc.stdout.strip())
        found.append(common)
        if common.name == ".git" and (common.parent / ".evolve").is_dir():
            found.append(common.parent / ".evolve")
    return found


def copy_worktree(worktree: Path, dest: Path) -> None:
    """The worktree's files (not its .git) into `dest`: the run works on this copy, which goes away."""
    total = 0

    def ignore(folder: str, names: list[str]) -> list[str]:
        nonlocal total
        skip = [n for n in names if n == ".git"]
        for n in names:
            if (
                n not in skip
                and os.path.isfile(os.path.join(folder, n))
                and not os.path.islink(os.path.join(folder, n))
            ):
                total += os.path.getsize(os.path.join(folder, n))
        if total > WORKTREE_LIMIT:
            raise TrainerError(
                f"the worktree {worktree} holds over {WORKTREE_LIMIT >> 20} MB of files; a genome is code"
            )
        return skip

    shutil.copytree(worktree, dest, symlinks=True, ignore=ignore)


class _Run:
    """The folders of one run: on the host, and as the run sees them."""

    def __init__(self, logs: Path, isolated: bool):
        self.root = logs / f"run-{secrets.token_hex(6)}"
        self.work, self.tmp, self.home = self.root / "work", self.root / "tmp", self.root / "home"
        # a socket's path must be short (108 bytes): its folder lives in the system's temp dir
        self.sock, self.artifact = Path(tempfile.mkdtemp(prefix="evolve-sock-")), self.root / "artifact"
        self.cache, self.staging = self.root / "cache", self.root / "cache-snapshot"
        self.eval_tmp = self.root / "eval-tmp"
        for d in (self.tmp, self.home, self.artifact, self.eval_tmp):
            d.mkdir(parents=True)
        self.isolated = isolated

    def inside(self, host: Path, name: str) -> Path:
        return INSIDE / name if self.isolated else host


def _child_env(
    run: _Run, env: dict[str, str], data_view: Path, writable: Sequence[str | Path]
) -> dict[str, str]:
    """Where the run's caches, temp files and home are (the harness's choice, never the parent's)."""
    cache = run.inside(run.cache, "cache")
    for sub in ("inductor", "triton", "xdg", "nv"):
        (run.cache / sub).mkdir(parents=True, exist_ok=True)
    tmp, home = run.inside(run.tmp, "tmp") if not run.isolated else Path("/tmp"), run.inside(run.home, "home")
    env.update(
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
        TRITON_CACHE_DIR=str(cache / "triton"),
        XDG_CACHE_HOME=str(cache / "xdg"),
        CUDA_CACHE_PATH=str(cache / "nv"),
        HOME=str(home),
        TMPDIR=str(tmp),
        TMP=str(tmp),
        TEMP=str(tmp),
        EVOLVE_DATA=str(data_view),
        **{STREAM_VAR: str(run.inside(run.sock, "sock") / "data.sock")},
    )
    allowed = [run.inside(run.work, "work"), tmp, cache, home, Path("/dev"), *map(Path, writable)]
    env[WRITABLE_VAR] = os.pathsep.join(str(p) for p in allowed)
    env[READABLE_VAR] = os.pathsep.join(
        [str(data_view), str(run.inside(run.sock, "sock")), *_pythonpath(env)]
    )
    # the shards are served, never read (without namespaces the data folder holds them: the
    # tripwire is then all that guards the validation split)
    env[SECRET_VAR] = os.pathsep.join(
        str(data_view / f"{split}.{ext}") for split in ("train", "val") for ext in ("bin", "idx")
    )
    return env


def _data_view(run: _Run, data: Path) -> Path:
    """What the run sees of the prepared data: the manifest and the tokenizer (the shards are served)."""
    if not run.isolated:
        return data
    view = run.root / "data"
    view.mkdir()
    for name in ("manifest.json", "tokenizer.json"):
        shutil.copy2(data / name, view / name)
    return view


def run(
    worktree: str | Path,
    *,
    depth: int,
    budget: float,
    seed: int,
    devices: Sequence[int | str] | int | str = ("cpu",),
    profile: str | Profile | None = None,
    data_dir: str | Path | None = None,
    log_dir: str | Path | None = None,
    allowance: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    script: str = "train.py",
    log_limit: int = LOG_LIMIT,
    grace: float = KILL_GRACE,
    writable: Sequence[str | Path] = (),
    budget_unit: str | None = None,
    window_limit: float | None = None,
    exit_grace: float = EXIT_GRACE,
) -> RunResult:
    """Run `script` in a private copy of `worktree` and judge it. See the module docstring.

    `budget` is in `budget_unit` ("seconds" or "tokens"; default the profile's). `allowance` is
    the start-up time before the training window opens (and the time the evaluator may take);
    `window_limit` caps the window's wall clock (default: budget x 1.25 + 30 s for seconds, 10 x
    allowance for tokens), and `exit_grace` is how long a run may take to exit after its handover.
    `profile` is a name or a Profile (default: `EVOLVE_PROFILE`, else h100); `data_dir` defaults to
    the profile's prepared dataset; the log goes to `log_dir` (default: a fresh temporary folder),
    which must be outside the worktree. `writable` folders are mounted writable into the run."""
    worktree = Path(worktree).resolve()
    script_path = (worktree / script).resolve()
    if not script_path.is_file() or worktree not in script_path.parents:
        raise TrainerError(f"no {script} in {worktree}: pass the worktree that holds the training script")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise TrainerError(f"depth must be a positive integer, got {depth!r}")
    prof = _resolve_profile(profile)
    unit = budget_unit or prof.budget_unit
    if unit not in BUDGET_UNITS:
        raise TrainerError(f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
    budget = float(budget)
    if not budget > 0:
        raise TrainerError(f"budget must be > 0 {unit}, got {budget}")
    devs = normalize_devices(devices)
    on_cpu = devs[0] == "cpu"
    startup = prof.allowance if allowance is None else float(allowance)
    window = window_limit or (budget * 1.25 + 30 if unit == "seconds" else 10 * startup)
    limit = startup + window + exit_grace
    isolated = isolation.mode() == "bwrap"
    iso_label = f"bubblewrap {isolation.bwrap_version().split()[-1]}" if isolated else "none"
    if not isolated:
        warnings.warn(
            "EVOLVE_ISOLATION=none: train.py runs without namespaces and can read the validation data, "
            "the store and your files; its scores are marked isolation=none",
            stacklevel=2,
        )

    data = Path(data_dir).resolve() if data_dir is not None else dataset_dir(prof).resolve()
    try:
        manifest = prepare.check_dataset(data)  # a missing or truncated shard is the data's fault
    except PrepareError as exc:
        raise TrainerError(str(exc)) from None
    if manifest.profile != prof.name:
        raise TrainerError(
            f"the data at {data} was prepared for profile {manifest.profile!r}, not {prof.name!r}; "
            f"pass the matching data_dir or profile"
        )
    logs = (Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="evolve-run-"))).resolve()
    if logs == worktree or worktree in logs.parents:
        raise TrainerError(f"log_dir {logs} is inside the worktree; train.py could rewrite its own log")
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "run.log"

    provenance = dict(
        depth=depth, budget=budget, seed=int(seed), profile=prof.name, devices=devs,
        data_fingerprint=manifest.fingerprint, torch_version=_torch_version(), gpu_name=gpu_name(devs[0]),
        commit=_commit(worktree), budget_unit=unit, isolation=iso_label, cpu_name=cpu_name(),
    )  # fmt: skip
    run_dirs = _Run(logs, isolated)
    try:
        return _run(
            run_dirs, worktree, script, prof, data, devs, on_cpu, depth, budget, unit, int(seed), startup, limit,
            extra_env, writable, log_path, log_limit, grace, exit_grace, provenance,
        )  # fmt: skip
    finally:
        shutil.rmtree(run_dirs.root, ignore_errors=True)
        shutil.rmtree(run_dirs.sock, ignore_errors=True)


def _run(run, worktree, script, prof, data, devs, on_cpu, depth, budget, unit, seed, startup, limit,
         extra_env, writable, log_path, log_limit, grace, exit_grace, provenance) -> RunResult:  # fmt: skip
    copy_worktree(worktree, run.work)
    cache = CompileCache.from_env(evolve_home())
    key = tree_key(run.work)
    warm = cache.fill(key, run.cache)
    data_view = _data_view(run, data)
    contract = {
        "EVOLVE_DEPTH": str(depth),
        "EVOLVE_BUDGET": repr(budget),
        "EVOLVE_BUDGET_UNIT": unit,
        "EVOLVE_SEED": str(seed),
        "EVOLVE_PROFILE": prof.name,
        "EVOLVE_DEVICE": "cpu" if on_cpu else "cuda",
        "CUDA_VISIBLE_DEVICES": "" if on_cpu else ",".join(devs),
        "PYTHONUNBUFFERED": "1",
    }
    env = build_env(os.environ, contract, extra_env)
    python = sys.executable
    probe = _probe(python, run.work, run.work, env)
    if probe is None:  # not importable as installed: show the child where the trainer's own prepare lives
        own_root = str(Path(prepare.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), own_root) if p)
        probe = _probe(python, run.work, run.work, env)
    if probe is None:
        raise TrainerError(f"train.py could not import prepare with {python}; install autoevolve into it")
    child_prepare = Path(probe["prepare"]).resolve()
    if child_prepare == run.work or run.work in child_prepare.parents:
        # a prepare/ folder in the worktree would replace the harness's code with the genome's own
        return RunResult(
            status=Status.INVALID,
            reason="train.py would import prepare from inside its worktree; not run",
            metrics={}, wall_seconds=0.0, log_path=None, error_tail="", returncode=None, **provenance,
        )  # fmt: skip
    env = _child_env(run, env, run.inside(data_view, "data"), writable)
    # the scoring code is the evaluator's: a training process that opens it is looking for a way in
    scoring = [child_prepare / name for name in ("metric.py", "evaluate.py")]
    env[SECRET_VAR] = os.pathsep.join([env[SECRET_VAR], *map(str, scoring)])
    env[HIDDEN_VAR] = os.pathsep.join(
        str(p) for p in harness_paths(worktree, data, log_path.parent, run.isolated)
    )
    work_inside = run.inside(run.work, "work")
    cmd = _command(python, str(work_inside / script), len(devs))
    if run.isolated:
        box = isolation.Sandbox()  # the run's own folders first: later mounts may sit inside /tmp
        box.rw(run.work, work_inside).rw(run.tmp, "/tmp").rw(run.cache, INSIDE / "cache").rw(
            run.home, INSIDE / "home"
        )
        box.ro(run.sock, INSIDE / "sock").ro(data_view, INSIDE / "data")
        box.system()
        paths = [*isolation.python_paths(probe), *isolation.library_paths(env), *_pythonpath(env)]
        box.python([p for p in paths if not Path(p).resolve().is_relative_to(run.root)])
        for folder in writable:
            Path(folder).mkdir(parents=True, exist_ok=True)
            box.rw(Path(folder).resolve())
        if not on_cpu:
            box.gpus(devs)
        cmd = box.command(cmd, cwd=str(work_inside))
    prepare_before = package_hash(child_prepare)

    evaluator = Evaluator(
        artifact=run.artifact, data_dir=data, seq_len=prof.seq_len, eval_tokens=prof.eval_tokens,
        device="cpu" if on_cpu else devs[0], tmp=run.eval_tmp, log_path=log_path.with_name("eval.log"),
        isolated=run.isolated, parent_env={**os.environ, **{k: v for k, v in (extra_env or {}).items() if k == "OMP_NUM_THREADS"}},
    )  # fmt: skip
    server = DataServer(
        run.sock / "data.sock", data_dir=data, seq_len=prof.seq_len, seed=seed, budget=budget, unit=unit,
        startup=startup, artifact_dir=run.artifact, expected_world=len(devs),
        on_window=lambda: cache.snapshot(run.cache, run.staging),
    ).start()  # fmt: skip

    def poll() -> str | None:
        led = server.ledger
        if led.graph_at is not None and not evaluator.graph_sent:
            evaluator.graph()
        reason = server.tick()
        if reason is None and led.weights_at is not None and time.monotonic() - led.weights_at > exit_grace:
            return "exit"  # it handed over its model and did not exit: stopped, no fault
        return reason

    shown = " ".join(
        "<import prepare, run>" if part == LAUNCH else part for part in _command(python, script, len(devs))
    )
    log_path.write_text(
        f"[trainer] {shown} in a copy of {worktree}: depth {depth}, budget {budget:g} {unit}, seed {seed}, "
        f"profile {prof.name}, devices {','.join(devs)}, isolation {provenance['isolation']}, "
        f"compile cache {'warm' if warm else 'cold'}\n"
    )
    launched = time.monotonic()
    try:
        evaluator.start()  # from this thread, which outlives the run (a death signal follows it)
        outcome = supervise(
            cmd, cwd=run.work, env=env, limit=limit, log_path=log_path, tag=secrets.token_hex(8),
            log_limit=log_limit, grace=grace, poll=poll,
        )  # fmt: skip
    except BaseException:
        evaluator.abort()
        raise
    finally:
        server.close()
    if run.isolated and outcome.returncode is not None and 128 < outcome.returncode <= 128 + 64:
        # bubblewrap reports a child killed by signal N as exit code 128 + N
        outcome = dataclasses.replace(outcome, returncode=128 - outcome.returncode)
    led = server.ledger
    tampering = ""
    if package_hash(child_prepare) != prepare_before:
        tampering = f"the prepare package at {child_prepare} changed during the run"
    score: dict | None = None
    handed_over = led.weights_at is not None and not led.problems and not outcome.timed_out
    exited = time.monotonic()
    if handed_over and not tampering:
        score = evaluator.go(limit=startup + 60 * (1 + prof.eval_tokens / 2**20))
    else:
        evaluator.abort()
    if led.window_start is not None:
        cache.keep(key, run.staging)
    verdict = judge(outcome, led, score, tampering=tampering)
    train_end = log_path.stat().st_size
    _append_eval_log(log_path)
    with open(log_path, "a") as log:
        ended = (
            f"stopped {exit_grace:g} s after its handover"
            if outcome.stopped == "exit"
            else f"exit code {outcome.returncode}"
        )
        log.write(
            f"\n[trainer] {ended}, {outcome.wall_seconds:.1f} s in: {verdict.status.value} ({verdict.reason})\n"
        )
        if verdict.status is Status.OK:
            log.write(
                "[trainer] ---\n" + "".join(f"[trainer] {k}: {v}\n" for k, v in verdict.metrics.items())
            )
    timeline = _timeline(launched, led, exited, evaluator.go_at if score is not None else None)
    with open(log_path, "a") as log:
        log.write(
            "[trainer] timeline (s from launch): " + ", ".join(f"{k} {v}" for k, v in timeline.items()) + "\n"
        )
    extra = {
        "output_bytes": outcome.output_bytes,
        "compile_cache": "warm" if warm else "cold",
        "timeline": timeline,
        **verdict.extra,
    }
    if outcome.truncated:
        extra["log_truncated"] = True
    return RunResult(
        status=verdict.status,
        reason=verdict.reason,
        metrics=verdict.metrics,
        wall_seconds=outcome.wall_seconds,
        log_path=str(log_path),
        error_tail=""
        if verdict.status.is_success()
        else tail_lines(outcome.tail + _log_after(log_path, train_end)),
        returncode=outcome.returncode,
        extra=extra,
        **provenance,
    )


def _timeline(launched: float, led, exited: float, eval_started: float | None) -> dict[str, float]:
    """Where a run's wall clock went, in seconds from its launch: the first batch (the start-up:
    imports, the model, the warm-up), the graph, the weights, the training process's end, the
    evaluator told to go and its answer (the end)."""
    marks = {"first_batch": led.window_start, "graph": led.graph_at, "weights": led.weights_at,
             "exit": exited, "go": eval_started}  # fmt: skip
    out = {k: round(v - launched, 2) for k, v in marks.items() if v is not None}
    if eval_started is not None:
        out["scored"] = round(time.monotonic() - launched, 2)
    return out


def _log_after(log_path: Path, offset: int) -> str:
    """What was written to the log from `offset` on (the evaluator's lines, the verdict), capped."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            return f.read(64 * 1024).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _pythonpath(env: Mapping[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _append_eval_log(log_path: Path) -> None:
    """The evaluator's own output, at the end of the run's log (capped)."""
    eval_log = log_path.with_name("eval.log")
    try:
        text = eval_log.read_bytes()[-64 * 1024 :].decode("utf-8", errors="replace")
        eval_log.unlink()
    except OSError:
        return
    if text.strip():
        with open(log_path, "a") as log:
            log.write("\n[evaluator] " + "\n[evaluator] ".join(text.rstrip().splitlines()) + "\n")
