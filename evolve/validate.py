"""Transfer validation: re-run the top elites and the baseline at a deeper depth, with their own budget.

`validate(workspace, ValidationSpec(depth=24, top=5, seeds=3), devices)` picks the K best
individuals of the run at the search depth (accepted ones; the baseline apart), runs each of them
and the baseline `seeds` times at `depth` (seeds 42, 43, ... as the search uses, so every
individual sees the same data orders), `gpus_per_run` devices per run through torchrun, on the
same profile and prepared data as the search, and records the runs in the store with purpose
`validation` beside the search-depth ones. Then it computes and keeps the verdicts
(`evolve.champion`).

Resumable and idempotent: an (individual, depth, seed) that already has a validation run, ok or
not, is not run again, so `evolve validate` after a Ctrl-C or a crash does only what is missing,
and a second identical call runs nothing. Safe next to a running `evolve run` of the same
workspace: the store is SQLite in WAL mode with short transactions, runs happen in worktrees of
their own (`.evolve/worktrees/validate-<pid>-<i>`, locked against `git worktree prune`), and it
uses only the devices it is given.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import threading
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import prepare
from genome.repo import git_process, run_git
from genome.settings import SETTINGS_FILE, read_settings
from genome.workspace import Workspace
from genome.worktrees import POOL_DIR
from prepare.errors import PrepareError
from prepare.profiles import Profile, budget_text, dataset_dir, get_profile
from trainer import Executor, Job, LocalExecutor, RunResult, TrainerError

from .champion import (
    DB_FILE,
    Champion,
    TransferReport,
    baseline_of,
    choose_champion,
    save_verdicts,
    transfer_report,
)
from .config_check import check_keys, check_tables, check_values, operator_options
from .errors import EvolveError
from .judging import Evidence, run_alpha
from .promotion import PromotionPolicy
from .scheduler import compress_log, kill_training_children
from .store import Evaluation, Individual, Purpose, Status, Store

FIRST_SEED = 42  # the engine's first seed: validation seed k is 42 + k for every individual
EVENT = "validation"  # one event per finished validation, with the verdicts' summary
EVENT_RUN = "validated"  # one event per recorded validation run


@dataclass(frozen=True)
class ValidationSpec:
    """What `evolve validate` asks for. `budget` None: the profile's time budget."""

    depth: int
    top: int = 5
    seeds: int = 3
    budget: float | None = None
    gpus_per_run: int = 1
    allowance: float | None = None  # extra seconds per run beyond the budget (profile's default)
    pending: bool = False  # also children still waiting for their re-evaluation seeds
    ids: tuple[str, ...] = ()  # these individuals instead of the top K (whatever the search decided)

    def __post_init__(self) -> None:
        checks = (
            (self.depth >= 1, "--depth must be >= 1"),
            (self.top >= 1, "--top must be >= 1"),
            (self.seeds >= 1, "--seeds must be >= 1 (2 or more measure the noise floor at that depth)"),
            (self.budget is None or self.budget > 0, "--budget must be > 0 seconds"),
            (self.gpus_per_run >= 1, "--gpus-per-run must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise EvolveError(message)

    @classmethod
    def from_workspace(cls, ws: Workspace, **overrides: Any) -> ValidationSpec:
        """evolve.toml's optional [validate] table (depth, top, seeds, budget, gpus_per_run,
        allowance), then the non-None `overrides`; depth defaults to the profile's validation depth."""
        data = read_settings(ws.root / SETTINGS_FILE)
        check_tables(data, operator_options())
        table = dict(data.get("validate") or {})
        check_keys("validate", table, {f.name for f in fields(cls)})
        check_values("validate", table, typing.get_type_hints(cls))
        values = {**table, **{k: v for k, v in overrides.items() if v is not None}}
        values.setdefault("depth", get_profile(ws.settings.profile).validation_depth)
        try:
            return cls(**values)
        except TypeError as exc:
            raise EvolveError(f"evolve.toml: bad [validate] value ({exc})") from None


@dataclass(frozen=True)
class Task:
    individual: Individual
    seed: int


@dataclass(frozen=True)
class ValidationResult:
    report: TransferReport | None
    champion: Champion | None
    candidates: tuple[str, ...]  # the top K validated this time (the baseline apart)
    ran: int  # runs done now
    skipped: int  # runs already in the store
    failed: int  # runs done now that were not ok
    stopped: bool  # a stop request ended it before every run was done


@dataclass(frozen=True)
class Context:
    """The run's identity that validation must keep: profile, data, search depth."""

    run: str
    profile: Profile
    search_depth: int
    data_dir: Path
    fingerprint: str


def open_store(ws: Workspace) -> Store:
    db = ws.state_dir / DB_FILE
    if not db.exists():
        raise EvolveError(f"no evolution in {ws.root} yet; run `evolve run` first, then validate its elites")
    return Store(db)


def context(ws: Workspace, store: Store) -> Context:
    """The run's profile, search depth and data, checked against what the search used."""
    run = store.get_run(ws.run)
    if run is None:
        raise EvolveError(f"run {ws.run!r} has not started yet; start it with `evolve run`")
    profile = get_profile(run.profile)
    source = str(run.settings.get("source") or ws.settings.source)
    data = Path(os.environ["EVOLVE_DATA"]) if os.environ.get("EVOLVE_DATA") else dataset_dir(profile, source)
    try:
        hint = f"run `evolve prepare --profile {profile.name} --source {shlex.quote(source)}`"
        fingerprint = prepare.load_manifest(data, hint=hint).fingerprint
    except PrepareError as exc:
        raise EvolveError(f"{exc} (validation needs the data the search used)") from None
    expected = run.settings.get("data_fingerprint")
    if expected and expected != fingerprint:
        raise EvolveError(
            f"the prepared data at {data} is not the data run {ws.run!r} was searched on "
            f"(fingerprint {fingerprint[:12]}, expected {str(expected)[:12]}); point EVOLVE_DATA at that data"
        )
    depth = int(run.settings.get("depth") or ws.settings.depth)
    return Context(ws.run, profile, depth, data, fingerprint)


def candidates(
    store: Store, run: str, search_depth: int, top: int, pending: bool = False
) -> list[Individual]:
    """The `top` individuals the search kept (or has not judged), the champion first, then by the
    bound elites are ranked by (`evolve.promotion.pessimistic`).

    The baseline is not a candidate (it is always validated, as the reference); neither is a
    rejected child, nor (unless `pending`) one still waiting for its next seed, which is ranked by
    the seeds it has so far."""
    base = baseline_of(store, run)
    waiting = (Status.EVALUATED, Status.QUEUED, Status.RUNNING) if pending else (Status.EVALUATED,)
    ev = Evidence(store, run, search_depth)
    policy = PromotionPolicy(alpha=run_alpha(store, run))
    champ = choose_champion(store, run, search_depth)
    ranked = []
    for ind_id, ind in ev.individuals.items():
        if base is not None and ind_id == base.id:
            continue
        if not (ind.decision == "accept" or (ind.decision is None and ind.status in waiting)):
            continue
        bound = ev.bound(ind_id, policy)
        if bound is None:
            continue
        first = 0 if champ is not None and ind_id == champ.id else 1
        ranked.append((first, bound, -ev.score(ind_id).n, ind_id))  # type: ignore[union-attr]
    return [ev.individuals[r[-1]] for r in sorted(ranked)[:top]]


def chosen(store: Store, run: str, search_depth: int, spec: ValidationSpec) -> list[Individual]:
    """`spec.ids` when given (each must be an individual of `run` other than its baseline), else
    the `candidates`."""
    if not spec.ids:
        return candidates(store, run, search_depth, spec.top, spec.pending)
    base = baseline_of(store, run)
    out = []
    for ident in dict.fromkeys(spec.ids):
        ind = store.get(ident)
        if ind is None or ind.run != run:
            raise EvolveError(f"--id {ident}: no individual of run {run!r} has that id (see `evolve top`)")
        if base is not None and ind.id == base.id:
            raise EvolveError(
                f"--id {ident}: that is the baseline, which is always validated as the reference"
            )
        out.append(ind)
    return out


def plan(
    store: Store, run: str, depth: int, seeds: int, individuals: Sequence[Individual]
) -> tuple[list[Task], int]:
    """The runs still missing, seed by seed (all individuals' seed 42 first), and how many exist."""
    done: dict[str, set[int]] = {}
    for e in store.evaluations(run=run, purpose=Purpose.VALIDATION):
        if e.depth == depth:
            done.setdefault(e.individual, set()).add(e.seed)
    tasks, skipped = [], 0
    for k in range(seeds):
        seed = FIRST_SEED + k
        for ind in individuals:
            if seed in done.get(ind.id, set()):
                skipped += 1
            else:
                tasks.append(Task(ind, seed))
    return tasks, skipped


def check_comparable(store: Store, ctx: Context, depth: int, budget: float) -> None:
    """Refuse to mix runs of another budget, profile or data into this depth's validation scores."""
    for e in store.evaluations(run=ctx.run, purpose=Purpose.VALIDATION):
        if e.depth != depth:
            continue
        if abs(e.budget - budget) > 1e-9:
            raise EvolveError(
                f"run {ctx.run!r} was validated at depth {depth} with a budget of {budget_text(e.budget, e.budget_unit)}; "
                f"pass --budget {e.budget:g} to add to it (scores of different budgets never mix)"
            )
        if e.profile != ctx.profile.name or (e.data_fingerprint and e.data_fingerprint != ctx.fingerprint):
            raise EvolveError(
                f"depth {depth} of run {ctx.run!r} was validated with other data or profile; "
                f"validate at another --depth"
            )


class _Worktrees:
    """Worktrees of this validation only, apart from `evolve run`'s pool; removed at the end."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        base = root / POOL_DIR
        base.mkdir(parents=True, exist_ok=True)
        self.paths = [base / f"validate-{os.getpid()}-{i}" for i in range(n)]
        self.free: queue.Queue[Path] = queue.Queue()
        for path in self.paths:
            self._remove(path)  # left by a killed validation that had the same pid
            # --lock: `git worktree prune` in a concurrent `evolve run` leaves them alone.
            run_git(root, "worktree", "add", "--detach", "--lock", "--quiet", str(path), "HEAD")
            self.free.put(path)

    def _remove(self, path: Path) -> None:
        # Twice forced: removes it even when locked, dirty or already deleted from disk.
        git_process(self.root, "worktree", "remove", "--force", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)

    def checkout(self, commit: str) -> Path:
        path = self.free.get()
        run_git(path, "checkout", "--detach", "--force", "--quiet", commit)
        run_git(path, "clean", "-fdxq")
        return path

    def give_back(self, path: Path) -> None:
        self.free.put(path)

    def close(self) -> None:
        for path in self.paths:
            self._remove(path)


def validate(
    ws: Workspace,
    spec: ValidationSpec,
    devices: Sequence[str],
    *,
    executor: Executor | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> ValidationResult:
    """Validate the run's top `spec.top` and its baseline at `spec.depth` (see the module docstring).

    `devices` are the executor's devices (GPU indices, or "cpu" slots) unless an `executor` is
    given. A set `stop` event lets the runs in flight finish and starts no new one."""
    stop = stop or threading.Event()
    say = on_event or (lambda kind, payload: None)
    with open_store(ws) as store:
        ctx = context(ws, store)
        if spec.depth == ctx.search_depth:
            raise EvolveError(
                f"--depth {spec.depth} is the search depth; validation checks a deeper one "
                f"(the profile's is {ctx.profile.validation_depth})"
            )
        budget = float(spec.budget or ctx.profile.budget)
        check_comparable(store, ctx, spec.depth, budget)
        base = baseline_of(store, ctx.run)
        if base is None:
            raise EvolveError(f"run {ctx.run!r} has no baseline yet; let `evolve run` evaluate it first")
        picked = chosen(store, ctx.run, ctx.search_depth, spec)
        if not picked:
            waiting = "" if spec.pending else " (--pending takes children still being re-evaluated too)"
            raise EvolveError(
                f"run {ctx.run!r} has no evaluated individual besides the baseline yet; "
                f"let `evolve run` find some first{waiting}"
            )
        tasks, skipped = plan(store, ctx.run, spec.depth, spec.seeds, [base, *picked])
        ran = failed = 0
        if tasks:
            say("validation_start", {"depth": spec.depth, "runs": len(tasks), "skipped": skipped,
                                     "individuals": [base.id, *(i.id for i in picked)]})  # fmt: skip
            ran, failed = _run_tasks(ws, store, ctx, spec, budget, tasks, devices, executor, stop, say)
        report = transfer_report(store, ctx.run, ctx.search_depth, spec.depth)
        if report is not None:
            save_verdicts(store, report)
        champ = choose_champion(store, ctx.run, ctx.search_depth)
        stopped = ran < len(tasks)
        summary = {
            "depth": spec.depth,
            "ran": ran,
            "failed": failed,
            "skipped": skipped,
            "stopped": stopped,
            "spearman": report.spearman if report else None,
            "verdicts": {r.individual: r.verdict.value for r in report.rows} if report else {},
            "champion": champ.id if champ else None,
            "champion_validated": bool(champ and champ.validated),
        }
        store.add_event(EVENT, summary, run=ctx.run)
        say(EVENT, summary)
    return ValidationResult(report, champ, tuple(i.id for i in picked), ran, skipped, failed, stopped)


def _run_tasks(
    ws: Workspace,
    store: Store,
    ctx: Context,
    spec: ValidationSpec,
    budget: float,
    tasks: list[Task],
    devices: Sequence[str],
    executor: Executor | None,
    stop: threading.Event,
    say: Callable[[str, dict[str, Any]], None],
) -> tuple[int, int]:
    """Run the tasks, `slots // gpus_per_run` at a time, each recorded as soon as it ends."""
    own = executor is None
    try:
        ex = executor if executor is not None else LocalExecutor(devices)
    except TrainerError as exc:
        raise EvolveError(str(exc)) from None
    if spec.gpus_per_run > ex.slots:
        if own:
            ex.shutdown()
        raise EvolveError(
            f"--gpus-per-run {spec.gpus_per_run} needs that many devices; --gpus gives {ex.slots}"
        )
    parallel = max(1, ex.slots // spec.gpus_per_run)
    trees = _Worktrees(ws.root, min(parallel, len(tasks)))
    counts = {"ran": 0, "failed": 0}
    lock = threading.Lock()

    def one(task: Task) -> None:
        if stop.is_set():
            return
        ind, seed = task.individual, task.seed
        path = trees.checkout(ind.commit)
        try:
            log_dir = ws.state_dir / "logs" / ind.id / f"validation-d{spec.depth}-s{seed}-{os.getpid()}"
            job = Job(
                worktree=path,
                depth=spec.depth,
                budget=budget,
                seed=seed,
                profile=ctx.profile,
                data_dir=ctx.data_dir,
                log_dir=log_dir,
                gpus_per_run=spec.gpus_per_run,
                allowance=spec.allowance,
            )
            started = time.time()
            result: RunResult = ex.submit(job).result()
        finally:
            trees.give_back(path)
        if stop.is_set() and not result.ok:
            return  # killed by an interrupt, most likely: not a result; the next call runs it again
        data = result.to_dict()
        data["log_path"] = compress_log(result.log_path)
        evaluation = Evaluation.from_result(ind.id, data, purpose=Purpose.VALIDATION)
        store.record_evaluation(evaluation)
        payload = {"id": ind.id, "depth": spec.depth, "seed": seed, "status": evaluation.status,
                   "val_bpb": evaluation.val_bpb, "device": evaluation.device,
                   "wall": round(time.time() - started, 1), "reason": evaluation.reason}  # fmt: skip
        store.add_event(EVENT_RUN, payload, run=ctx.run)
        say(EVENT_RUN, payload)
        with lock:
            counts["ran"] += 1
            counts["failed"] += 0 if evaluation.ok else 1

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="evolve-validate")
    try:
        pending: set[Future] = {pool.submit(one, t) for t in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if isinstance(exc, TrainerError):
                    stop.set()
                    raise EvolveError(f"the trainer refused a validation run: {exc}") from None
                if exc is not None:
                    stop.set()
                    raise exc
    except KeyboardInterrupt:
        # Ctrl-C: queued runs never start, those in flight are killed (and not recorded).
        stop.set()
        kill_training_children()
        raise
    except BaseException:
        stop.set()  # queued runs never start; those in flight finish and are recorded
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if own:
            ex.shutdown(wait=True)
        trees.close()
    return counts["ran"], counts["failed"]


def set_aside(devices: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`evolve run --validate-every`: the search keeps all devices but the last, validation gets it."""
    if len(devices) < 2:
        raise EvolveError(
            f"--validate-every sets one device aside for validation and needs at least 2; --gpus gives {len(devices)}"
        )
    return tuple(devices[:-1]), tuple(devices[-1:])


class PeriodicValidation:
    """Validation inside `evolve run`: every `hours`, `validate` on the devices set aside, in a thread.

    Each round validates the current top K; what earlier rounds ran is not run again. `stop()`
    lets the runs in flight finish and be recorded (as the search's own runs do)."""

    def __init__(self, ws: Workspace, spec: ValidationSpec, devices: Sequence[str], hours: float) -> None:
        if not hours > 0:
            raise EvolveError("--validate-every must be > 0 hours")
        self.ws, self.spec, self.devices, self.every = ws, spec, tuple(devices), hours * 3600.0
        self.stopping = threading.Event()
        self.rounds: list[ValidationResult] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="evolve-validate-every", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.rounds.append(validate(self.ws, self.spec, self.devices, stop=self.stopping))
            except EvolveError as exc:  # nothing to validate yet, say: try again next round
                self.errors.append(str(exc))
                try:
                    with open_store(self.ws) as store:
                        store.add_event("validation_skipped", {"reason": str(exc)}, run=self.ws.run)
                except EvolveError:
                    pass

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join()
