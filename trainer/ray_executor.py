"""`RayExecutor`: the same training runs, spread over the GPUs of a Ray cluster.

Each `Job` becomes one Ray task that asks for `num_gpus`. The head (where the search, the SQLite
store and the git repository live) packs the job's code at submit time: a git bundle of the
worktree's commit, or, for a plain folder, a tar archive. The task unpacks it into a temporary
checkout on whatever node Ray picked, checks that the node has the same `prepare` package and the
same prepared data as the head, and calls the same `trainer.run` there on the GPUs Ray gave it. It
returns the `RunResult` (as a dict) and the log, which the head writes into the job's log folder.

A task whose worker or node dies is retried by Ray elsewhere (`max_retries`); the head waits for
the one answer, so the search records one evaluation, never two. A small reaper process beside
each task kills the training run if the worker is killed, so a retry never competes with an orphan
for the GPU.

Nodes need: autoevolve installed (`pip install 'autoevolve[ray]'`, same version as the head), git,
and the prepared data, either on a shared filesystem at the head's path, or prepared on each node
with `evolve prepare` (same profile and source, so the same fingerprint). A node whose data
differs fails the run with a TrainerError that says which node and what to do.

Under a time budget (`budget_unit="seconds"`) a score compares only with scores on the same
device model (five minutes on an H200 train more than on an A100), so the executor never mixes
models. On GPUs it pins one: Ray labels each GPU node with an `accelerator_type:<MODEL>` resource,
and every task asks for a sliver (0.001) of the pinned model's, so Ray places it only there;
`slots` counts that model's GPUs. The model is the one named (`accelerator_type`, `evolve run
--accelerator-type`), else the one with the most GPUs; `placement` says, in one line, which it
pinned and which GPUs it leaves idle. Where Ray knows no model (GPUs it did not label), it cannot
pin: it says so and uses every GPU, and the store sets aside a run on another model than the
run's scores are on (evolve.engine). On CPUs under a time budget the head's CPU model is pinned:
a node with another CPU model refuses the run with a TrainerError that names the node (as a node
with other data does). Under a token budget every node is used: the work is the same anywhere.
Ray's label is coarser than the name a run records ("H100" for both "NVIDIA H100 80GB HBM3" and
"NVIDIA H100 PCIe"); the store keys scores by the recorded name, so such a second variant is set
aside too.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepare.errors import PrepareError
from prepare.integrity import package_hash
from prepare.profiles import Profile, dataset_dir, get_profile
from prepare.shards import load_manifest

from .errors import TrainerError
from .executor import Executor, Job, run_options
from .result import RunResult, Status
from .runner import cpu_name, run

MAX_TREE_BYTES = 64 * 2**20  # a plain worktree shipped as tar; git worktrees go as bundles
LOG_HEAD = 64 * 1024  # bytes of a task's log sent back from its start ...
LOG_TAIL = 2 * 2**20  # ... and from its end
TASK_VAR = "AUTOEVOLVE_RAY_TASK"  # marks every process of one task, for the reaper
TMP_PREFIX = "evolve-ray-"  # a task's folder on its node: the checkout and the run's log
ACCELERATOR = "accelerator_type:"  # Ray's resource on a GPU node, named after its model
PIN = 0.001  # how much of it each task asks for: a label, not a limit

# Waits for its stdin to close (the task finished, or its worker died), then kills every process
# that carries the task's mark, and, if the worker died, removes the task's folder. Its own
# session, so killing the worker's group does not stop it.
_REAPER = r"""
import os, shutil, signal, sys, time
parent = os.getppid()
sys.stdin.buffer.read()
needle = sys.argv[1].encode()
for _ in range(20):
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                os.kill(int(pid), signal.SIGKILL)
                found += 1
        except OSError:
            pass
    if not found:
        break
    time.sleep(0.05)
if os.getppid() != parent:  # orphaned: nobody else will clean up
    shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


@dataclass(frozen=True)
class Package:
    """A worktree's code as it travels to a node."""

    kind: str  # "bundle" (git, rebuilt at `commit`) or "tar" (a plain folder)
    data: bytes
    commit: str | None


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=120)


def pack(worktree: Path) -> Package:
    """The code of `worktree`: its commit as a git bundle, or the folder as a tar archive."""
    worktree = Path(worktree).resolve()
    top = _git(worktree, "rev-parse", "--show-toplevel", "HEAD")
    lines = top.stdout.decode().split()
    if top.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == worktree:
        dirty = _git(worktree, "status", "--porcelain", "--untracked-files=no").stdout.strip()
        if dirty:
            raise TrainerError(
                f"{worktree} has uncommitted changes; a Ray node receives commits, so commit them first"
            )
        with tempfile.TemporaryDirectory(prefix="evolve-bundle-") as tmp:
            path = Path(tmp) / "code.bundle"
            made = _git(worktree, "bundle", "create", "--quiet", str(path), "HEAD")
            if made.returncode != 0:
                raise TrainerError(f"git bundle failed in {worktree}: {made.stderr.decode().strip()[:300]}")
            return Package("bundle", path.read_bytes(), lines[1])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(worktree, arcname=".")
    if buf.tell() > MAX_TREE_BYTES:
        raise TrainerError(
            f"{worktree} is {buf.tell() >> 20} MiB packed; put it in git to ship it as a bundle"
        )
    return Package("tar", buf.getvalue(), None)


def unpack(package: Package, dest: Path) -> Path:
    """Rebuild the worktree at `dest` (which must not exist yet)."""
    dest.mkdir(parents=True)
    if package.kind == "tar":
        with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.10.12 has no filters; the archive is our own
                tar.extractall(dest)  # noqa: S202
        return dest
    bundle = dest.parent / "code.bundle"
    bundle.write_bytes(package.data)
    for args in (("init", "--quiet"), ("fetch", "--quiet", str(bundle), "HEAD"),
                 ("checkout", "--quiet", "--detach", "FETCH_HEAD")):  # fmt: skip
        done = _git(dest, *args)
        if done.returncode != 0:
            raise TrainerError(
                f"git {args[0]} on {socket.gethostname()} failed: {done.stderr.decode()[:300]}"
            )
    head = _git(dest, "rev-parse", "HEAD").stdout.decode().strip()
    if head != package.commit:
        raise TrainerError(f"the bundle rebuilt {head[:12]} on {socket.gethostname()}, not {package.commit}")
    return dest


def node_data(data_dir: str, profile: str, source: str, fingerprint: str) -> Path:
    """The node's copy of the head's prepared data: the same path, else the node's own `evolve prepare`."""
    here = Path(data_dir)
    if not (here / "manifest.json").is_file():
        here = dataset_dir(get_profile(profile), source)
    host = socket.gethostname()
    hint = f"share the head's dataset folder at the same path, or run `evolve prepare --profile {profile} --source {source}` on it"
    try:
        found = load_manifest(here).fingerprint
    except PrepareError:
        raise TrainerError(f"node {host} has no prepared data at {data_dir} or {here}; {hint}") from None
    if found != fingerprint:
        raise TrainerError(
            f"node {host}: the data at {here} has fingerprint {found[:16]}, the head's has {fingerprint[:16]}; {hint}"
        )
    return here


def _trim(text: str) -> str:
    if len(text) <= LOG_HEAD + LOG_TAIL:
        return text
    cut = len(text) - LOG_HEAD - LOG_TAIL
    return f"{text[:LOG_HEAD]}\n[trainer] ... {cut} characters of the node's log left out ...\n{text[-LOG_TAIL:]}"


def _sweep_stale() -> None:
    """Remove the folders of earlier tasks whose worker is gone (a forced cancel kills the reaper too)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        try:
            os.kill(int((folder / "owner").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # not ours to judge: another user's, or still being made
            pass


def accelerator_label(gpu_name: str) -> str | None:
    """Ray's `accelerator_type` label of a GPU as torch names it ("NVIDIA H200" -> "H200")."""
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

        return NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(gpu_name)
    except (ImportError, AttributeError):  # another Ray: its documented pattern for NVIDIA names
        match = re.match(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)", gpu_name or "")
        return match.group(1).replace(" ", "-") if match else None


def gpus_by_model(nodes: list[Mapping[str, Any]]) -> dict[str, float]:
    """GPUs per Ray `accelerator_type` over the alive nodes of `ray.nodes()` ("" for unlabelled ones)."""
    out: dict[str, float] = {}
    for node in nodes:
        res = node.get("Resources") or {}
        if not node.get("Alive", True) or not res.get("GPU"):
            continue
        models = [k.split(":", 1)[1] for k in res if k.startswith(ACCELERATOR)] or [""]
        for model in models:
            out[model] = out.get(model, 0.0) + float(res["GPU"])
    return out


def run_on_node(package: Package, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray task: rebuild the code, check the node, run it on the GPUs Ray assigned, report."""
    import ray

    host = socket.gethostname()
    pinned_cpu = spec.get("cpu_model")
    if pinned_cpu and cpu_name() != pinned_cpu:
        raise TrainerError(
            f"node {host} has CPU {cpu_name() or 'unknown'!r}, the run's time budget is pinned to {pinned_cpu!r}; "
            f"a time budget compares only on one CPU model: take that node out of the cluster, or use a token budget"
        )
    if package_hash() != spec["prepare_hash"]:
        raise TrainerError(
            f"node {host} has another version of autoevolve's prepare package than the head; "
            f"install the same autoevolve on every node"
        )
    data = node_data(spec["data_dir"], spec["profile"], spec["source"], spec["fingerprint"])
    gpus = [str(g) for g in ray.get_gpu_ids()]
    devices = tuple(gpus) if spec["gpus"] else ("cpu",) * spec["devices"]
    if len(devices) < spec["devices"]:
        raise TrainerError(f"Ray gave the task {len(devices)} GPUs on {host}; it needs {spec['devices']}")
    mark = uuid.uuid4().hex
    _sweep_stale()
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        (Path(tmp) / "owner").write_text(str(os.getpid()))
        tree = unpack(package, Path(tmp) / "tree")
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, f"{TASK_VAR}={mark}", tmp],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            result = run(
                tree,
                depth=spec["depth"],
                budget=spec["budget"],
                seed=spec["seed"],
                devices=devices,
                profile=spec["profile"],
                data_dir=data,
                log_dir=Path(tmp) / "logs",
                allowance=spec["allowance"],
                extra_env={**spec["extra_env"], TASK_VAR: mark},
                script=spec["script"],
                writable=spec["writable"],
                **spec["options"],
            )
        finally:
            reaper.stdin.close()
            reaper.wait()
        log = Path(result.log_path).read_text(errors="replace") if result.log_path else ""
    return {
        "result": result.to_dict(),
        "log": _trim(log),
        "node": host,
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TrainerError("the Ray executor needs ray: pip install 'autoevolve[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Runs jobs as Ray tasks on a cluster: `address="auto"` (a cluster started with `ray start`),
    `"ray://HOST:PORT"` (Ray client) or None (a Ray runtime on this host only).

    `slots` (default: the cluster's GPUs / `gpus_per_task`, or its CPUs / `cpus_per_task` when
    `gpus_per_task` is 0) caps how many devices' worth of jobs are in flight at once. A job with
    `gpus_per_run=k` asks Ray for k * `gpus_per_task` GPUs on one node and takes k slots.

    `budget_unit="seconds"` (a time budget) pins one device model (see the module docstring):
    `accelerator_type` names it, else the one with the most GPUs is taken; the default slots are
    then that model's GPUs. A time-budget job on an executor made for tokens is refused."""

    def __init__(
        self,
        address: str | None = "auto",
        *,
        gpus_per_task: float = 1,
        cpus_per_task: float = 1,
        slots: int | None = None,
        max_retries: int = 3,
        init_options: Mapping[str, Any] | None = None,
        budget_unit: str | None = None,
        accelerator_type: str | None = None,
    ):
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, **dict(init_options or {}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "this host"
                raise TrainerError(
                    f"could not start or reach Ray at {where} ({str(exc).splitlines()[0][:200]}); "
                    f"start a cluster with `ray start --head` or pass --address ray://HOST:10001"
                ) from None
            self._owns_ray = True
        if gpus_per_task < 0 or cpus_per_task < 0:
            raise TrainerError("gpus_per_task and cpus_per_task must be >= 0")
        self.gpus_per_task = float(gpus_per_task)
        self.cpus_per_task = float(cpus_per_task)
        self.max_retries = int(max_retries)
        self.time_budget = budget_unit == "seconds"
        self.pinned: str | None = None  # the accelerator_type (GPUs) or CPU model runs are pinned to
        self.pinned_cpu: str | None = None
        self.placement = "every node" + ("" if self.time_budget else " (a token budget: any device model)")
        gpus = self._pin(accelerator_type) if self.time_budget else None
        if slots is None:
            total = ray.cluster_resources()
            if self.gpus_per_task > 0:
                slots = int((total.get("GPU", 0) if gpus is None else gpus) // self.gpus_per_task)
            else:
                slots = int(total.get("CPU", 0) // max(self.cpus_per_task, 1e-9))
        if slots < 1:
            kind = "GPUs" if self.gpus_per_task > 0 else "CPUs"
            raise TrainerError(
                f"the Ray cluster has no {kind} for a task; add nodes, or run with --gpus cpu:N"
            )
        self._slots = int(slots)
        self._used = 0
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="evolve-ray")
        self._remote = ray.remote(run_on_node)
        self._inflight: set = set()
        self._closed = False
        self._cancelled = False

    def _pin(self, named: str | None) -> float | None:
        """Under a time budget: pin one device model; the pinned model's GPUs (None: not pinned)."""
        if self.gpus_per_task == 0:
            self.pinned = self.pinned_cpu = cpu_name() or None
            self.placement = (
                f"time budget on CPUs: pinned to the head's CPU model {self.pinned!r}; a node with another refuses its runs"
                if self.pinned
                else "time budget on CPUs: the head's CPU model is unknown, so nodes are not checked"
            )
            return None
        by_model = gpus_by_model(self._ray.nodes())
        known = {m: n for m, n in by_model.items() if m}
        if named is not None and named not in known:
            have = ", ".join(f"{m} ({n:g} GPUs)" for m, n in sorted(known.items())) or "none"
            raise TrainerError(f"no Ray node has accelerator_type {named!r}; the cluster has: {have}")
        if not known:
            self.placement = (
                "time budget: Ray names no GPU model (no accelerator_type), so it cannot pin one; every GPU is "
                "used, and a run on another model than the run's scores is set aside"
            )
            return None
        self.pinned = named or max(known, key=lambda m: (known[m], m))
        idle = {m: n for m, n in by_model.items() if m != self.pinned}
        left = ", ".join(f"{n:g} {m or 'unlabelled'}" for m, n in sorted(idle.items()))
        self.placement = f"time budget: pinned to {self.pinned} ({known[self.pinned]:g} GPUs)" + (
            f"; {left} GPUs left idle: a time budget's scores compare only on one device model"
            if idle
            else ""
        )
        return known[self.pinned]

    @property
    def device_models(self) -> tuple[str, ...]:
        return (self.pinned,) if self.pinned else ()

    def matches_model(self, name: str) -> bool:
        """`name` as a run records it: a CPU model, or a GPU name that Ray labels as the pinned model."""
        if self.pinned is None:
            return False
        return name == self.pinned or (self.pinned_cpu is None and accelerator_label(name) == self.pinned)

    @property
    def slots(self) -> int:
        return self._slots

    def submit(self, job: Job) -> Future[RunResult]:
        if self._closed:
            raise TrainerError("this executor was shut down; create a new one to run more jobs")
        if not 1 <= job.gpus_per_run <= self.slots:
            raise TrainerError(f"a job asks for {job.gpus_per_run} devices; this executor has {self.slots}")
        # Packed now, on the caller's thread: the caller may reuse the worktree once submit returns.
        package = pack(job.worktree)
        spec = self._spec(job)
        return self._pool.submit(self._work, job, package, spec)

    def _spec(self, job: Job) -> dict[str, Any]:
        name = job.profile.name if isinstance(job.profile, Profile) else job.profile
        try:
            profile = get_profile(name)
            data = Path(job.data_dir) if job.data_dir is not None else dataset_dir(profile)
            manifest = load_manifest(data)
        except PrepareError as exc:
            raise TrainerError(str(exc)) from None
        if (job.budget_unit or profile.budget_unit) == "seconds" and not self.time_budget:
            raise TrainerError(
                "a time-budget job on a Ray executor made for a token budget would mix device models; "
                "make it with budget_unit='seconds'"
            )
        return {
            "cpu_model": self.pinned_cpu,
            "depth": job.depth, "budget": job.budget, "seed": job.seed, "profile": profile.name,
            "data_dir": str(data.resolve()), "source": manifest.source, "fingerprint": manifest.fingerprint,
            "prepare_hash": package_hash(), "gpus": self.gpus_per_task > 0, "devices": job.gpus_per_run,
            "allowance": job.allowance, "extra_env": dict(job.extra_env), "script": job.script,
            "writable": [str(p) for p in job.writable], "options": run_options(job),
        }  # fmt: skip

    def _work(self, job: Job, package: Package, spec: dict[str, Any]) -> RunResult:
        ray = self._ray
        with self._cond:
            self._cond.wait_for(lambda: self._used + job.gpus_per_run <= self._slots)
            self._used += job.gpus_per_run
        try:
            options = {
                "num_cpus": self.cpus_per_task * job.gpus_per_run,
                "num_gpus": self.gpus_per_task * job.gpus_per_run,
                "max_retries": self.max_retries,
                "retry_exceptions": False,  # a TrainerError is the same everywhere
            }
            if self.pinned and self.pinned_cpu is None:  # only the pinned model's nodes
                options["resources"] = {f"{ACCELERATOR}{self.pinned}": PIN}
            ref = self._remote.options(**options).remote(package, spec)
            with self._cond:
                self._inflight.add(ref)
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised by our code on the node
                if isinstance(exc.cause, TrainerError):
                    raise TrainerError(str(exc.cause)) from None
                raise
            except ray.exceptions.RayError as exc:  # cancelled, or its worker or node lost on every attempt
                return _lost(job, spec, self.max_retries, exc, cancelled=self._cancelled)
            finally:
                with self._cond:
                    self._inflight.discard(ref)
            return _landed(job, answer)
        finally:
            with self._cond:
                self._used -= job.gpus_per_run
                self._cond.notify_all()

    def abandon(self) -> None:
        """Cancel every task in flight (its worker is killed, and the reaper kills its run)."""
        self._cancelled = True
        with self._cond:
            refs = list(self._inflight)
        for ref in refs:
            self._ray.cancel(ref, force=True)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        if not wait:
            self.abandon()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._owns_ray and wait:
            self._ray.shutdown()
            self._owns_ray = False


def _landed(job: Job, answer: dict[str, Any]) -> RunResult:
    """The node's answer as the head's RunResult, its log written into the job's log folder."""
    logs = Path(job.log_dir) if job.log_dir is not None else Path(tempfile.mkdtemp(prefix="evolve-run-"))
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "run.log"
    log_path.write_text(answer["log"])
    data = dict(answer["result"])
    data["log_path"] = str(log_path) if data.get("log_path") else None
    data["extra"] = {**(data.get("extra") or {}), "node": answer["node"], "node_ip": answer["node_ip"],
                     "node_id": answer.get("node_id")}  # fmt: skip
    return RunResult.from_dict(data)


def _lost(job: Job, spec: Mapping[str, Any], retries: int, exc: Exception, cancelled: bool) -> RunResult:
    """Cancelled, or every attempt died with its worker or node: a crash on record, not an exception."""
    if cancelled:
        reason = "abandoned: the run was cancelled on its Ray node"
    else:
        reason = (
            f"the Ray task failed {retries + 1} times ({type(exc).__name__}): its worker or node was lost"
        )
    return RunResult(
        status=Status.CRASH, reason=reason, metrics={}, wall_seconds=0.0, log_path=None,
        error_tail=str(exc).strip()[-2000:], returncode=None, depth=job.depth, budget=float(job.budget),
        seed=int(job.seed), profile=spec["profile"], devices=(), data_fingerprint=spec["fingerprint"],
        torch_version=None, gpu_name=None, commit=None,
    )  # fmt: skip
