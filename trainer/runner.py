"""`run`: one genome at one (depth, budget, seed) on one device or a group of devices, judged.

The steps: resolve the profile, devices and data; build a scrubbed environment with the run
contract; find the `prepare` package the child will import and hash it and the data; run
`python train.py` (or torchrun) under a wall-clock limit; hash again; judge. The child imports
prepare before train.py's first line, and prepare reads a fresh signing key and the sandbox
policy from a pipe the trainer wrote and closed (never the environment, which /proc shows).
Problems with the request raise TrainerError; anything the run itself does is a RunResult.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import prepare
from prepare.contract import KEY_FD_VAR
from prepare.errors import PrepareError
from prepare.integrity import dataset_hash, package_hash
from prepare.profiles import Profile, dataset_dir, evolve_home, get_profile
from prepare.sandbox import HIDDEN, READ, WRITE, Policy, roots

from .env import build_env
from .errors import TrainerError
from .judge import Expected, judge, tail_lines
from .process import supervise
from .result import RunResult, Status

LOG_LIMIT = 50 * 2**20  # bytes of log kept per run; the rest is drained and dropped
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL at the deadline

# Where `import prepare` lands for the child, asked of the child's own interpreter, cwd and
# environment: a prepare/ folder in the worktree or on PYTHONPATH would shadow the installed one.
_PROBE = (
    "import importlib.util, sys; sys.path[0] = sys.argv[1]; "
    "s = importlib.util.find_spec('prepare'); "
    "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
)


# The child's first code: import prepare (which takes the key and arms the sandbox), then run the
# script as __main__ with its own folder on sys.path, as `python train.py` would. No .pyc writes:
# the sandbox refuses writes outside the run's own places.
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


def _child_prepare(python: str, cwd: Path, script_dir: Path, env: dict[str, str]) -> Path | None:
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, str(script_dir)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    location = proc.stdout.strip()
    return Path(location).resolve() if proc.returncode == 0 and location else None


def _hashes(prepare_dir: Path, data_dir: Path) -> tuple[str, str]:
    return package_hash(prepare_dir), dataset_hash(data_dir)


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


def _command(python: str, script: str, nproc: int) -> list[str]:
    if nproc == 1:
        return [python, "-c", LAUNCH, script]
    return [
        python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "--no-python", python, "-c", LAUNCH, script,
    ]  # fmt: skip


def _git_dirs(worktree: Path) -> list[Path]:
    """The repository's git directory and, for a worktree of a workspace, the workspace's `.evolve`."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=worktree,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    common = Path(proc.stdout.strip())
    found = [common]
    if common.name == ".git" and (common.parent / ".evolve").is_dir():
        found.append(common.parent / ".evolve")
    return found


def _cache_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where torch, Triton and CUDA keep compiled kernels: the only writable places outside the run."""
    home = Path(env.get("HOME") or Path.home())
    dirs = [home / ".cache", home / ".triton", home / ".nv"]
    for name in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        if env.get(name):
            dirs.append(Path(env[name]))
    return dirs


def sandbox_policy(
    worktree: Path,
    *,
    data: Path,
    prepare_dir: Path,
    logs: Path,
    tmp: Path,
    result: Path,
    env: Mapping[str, str],
    writable: Sequence[str | Path] = (),
) -> Policy:
    """What train.py may touch (see prepare.sandbox): write its worktree, temp dir and caches; read
    prepare and the data (validation files through the metric only); nothing of the workspace's
    git directory, store and other worktrees, or the log folder."""
    pairs = [(str(d), WRITE) for d in [*_cache_dirs(env), *writable]]
    pairs += [("/dev", WRITE), (str(evolve_home()), READ), (str(data), READ), (str(prepare_dir), READ)]
    pairs += [(str(d), HIDDEN) for d in _git_dirs(worktree)]
    pairs += [(str(logs), HIDDEN), (str(tmp), WRITE), (str(result), WRITE), (f"{result}.tmp", WRITE)]
    pairs += [(str(worktree), WRITE), (str(worktree / ".git"), HIDDEN)]
    val = [str(Path(data, name).resolve()) for name in ("val.bin", "val.idx")]
    return Policy(roots=roots(pairs), metric_only=tuple(val))


def _private_tmp(env: dict[str, str], tmp: Path) -> None:
    """Temp files go to a folder of this run; the compile cache stays shared between runs."""
    if "TORCHINDUCTOR_CACHE_DIR" not in env:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "user"
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    for name in ("TMPDIR", "TMP", "TEMP"):
        env[name] = str(tmp)


def _handover(key: str, policy: Policy) -> int:
    """A pipe holding the key and the policy, its write end closed: the child reads it once."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, json.dumps({"key": key, "sandbox": policy.to_json()}).encode())
    finally:
        os.close(write_end)
    return read_end


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
) -> RunResult:
    """Run `script` in `worktree` and judge it. See the module docstring for the steps.

    `profile` is a name or a Profile (default: `EVOLVE_PROFILE`, else h100); `data_dir` defaults
    to the profile's prepared dataset; the log and result file go to `log_dir` (default: a fresh
    temporary folder), which must be outside the worktree. train.py may write only in its worktree,
    a temp dir of its own, the compile caches and the `writable` folders (see prepare.sandbox)."""
    worktree = Path(worktree).resolve()
    script_path = (worktree / script).resolve()
    if not script_path.is_file():
        raise TrainerError(f"no {script} in {worktree}: pass the worktree that holds the training script")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise TrainerError(f"depth must be a positive integer, got {depth!r}")
    budget = float(budget)
    if not budget > 0:
        raise TrainerError(f"budget must be > 0 seconds, got {budget}")
    prof = _resolve_profile(profile)
    devs = normalize_devices(devices)
    on_cpu = devs[0] == "cpu"
    limit = budget + (prof.allowance if allowance is None else float(allowance))

    data = Path(data_dir) if data_dir is not None else dataset_dir(prof)
    try:
        manifest = prepare.load_manifest(data)
    except PrepareError as exc:
        raise TrainerError(str(exc)) from None
    if manifest.profile != prof.name:
        raise TrainerError(
            f"the data at {data} was prepared for profile {manifest.profile!r}, not {prof.name!r}; "
            f"pass the matching data_dir or profile"
        )

    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="evolve-run-"))
    logs = logs.resolve()
    if logs == worktree or worktree in logs.parents:
        raise TrainerError(f"log_dir {logs} is inside the worktree; train.py could rewrite its own judge")
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "run.log"
    result_path = logs / f"result-{secrets.token_hex(6)}.json"
    key = secrets.token_hex(32)

    contract = {
        "EVOLVE_DEPTH": str(depth),
        "EVOLVE_TIME_BUDGET": repr(budget),
        "EVOLVE_SEED": str(int(seed)),
        "EVOLVE_PROFILE": prof.name,
        "EVOLVE_DEVICE": "cpu" if on_cpu else "cuda",
        "CUDA_VISIBLE_DEVICES": "" if on_cpu else ",".join(devs),
        "EVOLVE_RESULT": str(result_path),
        "EVOLVE_DATA": str(Path(data).resolve()),
        "PYTHONUNBUFFERED": "1",
    }
    env = build_env(os.environ, contract, extra_env)
    python = sys.executable
    child_prepare = _child_prepare(python, worktree, script_path.parent, env)
    if child_prepare is None:
        # not importable as installed: show the child where the trainer's own prepare lives
        own_root = str(Path(prepare.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), own_root) if p)
        child_prepare = _child_prepare(python, worktree, script_path.parent, env)
    if child_prepare is None:
        raise TrainerError(f"train.py could not import prepare with {python}; install autoevolve into it")

    provenance = dict(
        depth=depth,
        budget=budget,
        seed=int(seed),
        profile=prof.name,
        devices=devs,
        data_fingerprint=manifest.fingerprint,
        torch_version=_torch_version(),
        gpu_name=gpu_name(devs[0]),
        commit=_commit(worktree),
    )
    if child_prepare == worktree or worktree in child_prepare.parents:
        # a prepare/ folder in the worktree would replace the fixed metric with the genome's own
        return RunResult(
            status=Status.INVALID,
            reason=f"train.py would import prepare from inside its worktree ({child_prepare}); not run",
            metrics={},
            wall_seconds=0.0,
            log_path=None,
            error_tail="",
            returncode=None,
            **provenance,
        )
    prepare_before, data_before = _hashes(child_prepare, data)

    tag = secrets.token_hex(8)
    tmp = logs / f"tmp-{tag}"
    tmp.mkdir()
    _private_tmp(env, tmp)
    policy = sandbox_policy(
        worktree,
        data=Path(data).resolve(),
        prepare_dir=child_prepare,
        logs=logs,
        tmp=tmp,
        result=result_path,
        env=env,
        writable=writable,
    )
    cmd = _command(python, script, len(devs))
    shown = " ".join("<import prepare, run>" if part == LAUNCH else part for part in cmd)
    log_path.write_text(
        f"[trainer] {shown} in {worktree}: depth {depth}, budget {budget:g} s, seed {seed}, "
        f"profile {prof.name}, devices {','.join(devs)}, limit {limit:g} s\n"
    )
    key_fd = _handover(key, policy)
    try:
        outcome = supervise(
            cmd,
            cwd=worktree,
            env={**env, KEY_FD_VAR: str(key_fd)},
            limit=limit,
            log_path=log_path,
            tag=tag,
            log_limit=log_limit,
            grace=grace,
            pass_fds=(key_fd,),
        )
    finally:
        os.close(key_fd)
        shutil.rmtree(tmp, ignore_errors=True)

    prepare_after, data_after = _hashes(child_prepare, data)
    tampering = ""
    if prepare_after != prepare_before:
        tampering = f"the prepare package at {child_prepare} changed during the run"
    elif data_after != data_before:
        tampering = f"the prepared data at {data} changed during the run"
    expected = Expected(
        depth=depth,
        budget=budget,
        seed=int(seed),
        profile=prof.name,
        world_size=len(devs),
        key=key.encode(),
        eval_tokens=prof.eval_tokens,
        seq_len=prof.seq_len,
        data_dir=str(Path(data).resolve()),
    )
    verdict = judge(outcome, result_path, expected, tampering)
    with open(log_path, "a") as log:
        log.write(
            f"\n[trainer] exit code {outcome.returncode} after {outcome.wall_seconds:.1f} s: "
            f"{verdict.status.value} ({verdict.reason})\n"
        )
    extra = {"output_bytes": outcome.output_bytes, **verdict.extra}
    if outcome.truncated:
        extra["log_truncated"] = True
    return RunResult(
        status=verdict.status,
        reason=verdict.reason,
        metrics=verdict.metrics,
        wall_seconds=outcome.wall_seconds,
        log_path=str(log_path),
        error_tail="" if verdict.status.is_success() else tail_lines(outcome.tail),
        returncode=outcome.returncode,
        extra=extra,
        **provenance,
    )
