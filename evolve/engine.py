"""The engine: one evolution in one workspace, tying settings, store, population, operators and devices.

`Engine(workspace, config, executor).run()` does, in order:

1. opens `.evolve/evolve.db` and the run's row (a run resumed with another profile, depth,
   budget or strategy is refused: its scores would not compare; so is one whose scores are under
   another comparability key than this session's runs would be, `evolve.records.ScoreKey`: under
   a time budget, the device model is part of it);
2. resumes: individuals left `running` by a crash go back to the queue, and children committed
   to git whose store row never landed are taken in as if just proposed, so the store and the
   `evo/<run>/` branches hold the same individuals;
3. evaluates the baseline `baseline_seeds` times (in parallel) and accepts it;
4. rebuilds the population from the store and hands over to the `Scheduler`: proposals
   (operator -> novelty -> static guard -> queue) and device runs (worktree -> trainer ->
   store -> promotion) until a stop condition.

Promotion (judging children, pairing runs of parents, confirming the best elite on fresh seeds)
is the `Promotion` mixin of `evolve.engine_promotion`.

Scores never mix keys. A run's key is its first ok search-depth evaluation's (the baseline's first
seed). A run that comes back under a key that does not admit it (a node with another card under
a time budget) is set aside: an `aside` event keeps what it measured, nothing is recorded, and its
individual goes back to the queue for the same seed, so it is neither scored nor counted as a
failure. More than `aside_limit` of those in a row stop the run with both keys named.

Settings come from evolve.toml: `[run]` (see genome.settings), an optional `[search]` table with
the keys of `EngineConfig` (operators, baseline_seeds, max_seeds, migrate_every, ahead, ...),
and `[operators.<name>]` tables handed to each operator (but `weight`, the engine's: a factor on
the operator's share of the draws, 0 to leave it out); flags of `evolve run` override them.
"""

from __future__ import annotations

import errno
import os
import random
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import prepare
from genome.errors import GenomeError
from genome.record import BASELINE_ID
from genome.workspace import Workspace
from genome.worktrees import POOL_DIR, WorktreePool
from prepare.errors import PrepareError
from prepare.profiles import dataset_dir, get_profile
from trainer import Executor, Job, RunResult, TrainerError

from .agreement import refuse_disagreement
from .engine_config import EngineConfig
from .engine_promotion import Promotion
from .errors import EvolveError
from .judging import FIRST_SEED
from .novelty import admit, code_hash
from .operators.base import (
    Operator,
    OperatorSetup,
    Outcome,
    Parent,
    Proposal,
    ProposalContext,
    available,
    make_operator,
)
from .operators.weights import PROPOSAL_FAILED, OperatorWeights, credits_from_store
from .pairs import Family, choose_parents
from .population import Member, Strategy, from_store
from .promotion import PromotionPolicy, Score
from .reference import baseline_failure, reference_run
from .scheduler import (
    EvalReport,
    Scheduler,
    Session,
    StopReason,
    compress_log,
    kill_leftover_runs,
    workspace_lock,
)
from .store import Evaluation, Individual, LineageKind, Purpose, ScoreKey, Status, Store
from .storefile import Backups, os_problem

DB_FILE = "evolve.db"
FULL_DISK_BYTES = 1 << 20  # below this much free space, a failed run is blamed on the disk, not the child
ASIDE_IN_A_ROW = 3  # runs set aside in a row (another key) that stop the run, at least; or one per slot


def _data_dir(config: EngineConfig) -> Path:
    # The tests and the trainer point EVOLVE_DATA at a prepared dataset; else the profile's.
    if os.environ.get("EVOLVE_DATA"):
        return Path(os.environ["EVOLVE_DATA"])
    return dataset_dir(get_profile(config.profile), config.source)


class Engine(Promotion):
    """One evolution. Build it, then `run()` (or `start()` and drive the scheduler from a test)."""

    def __init__(
        self,
        workspace: Workspace,
        config: EngineConfig,
        executor: Executor,
        *,
        on_event: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.ws = workspace
        self.config = config
        self.executor = executor
        self.run_name = workspace.run
        self.repo = workspace.repo()
        self.mutable = workspace.settings.mutable
        self.profile = get_profile(config.profile)
        self.data_dir = _data_dir(config)
        try:  # the fix names the workspace's own profile and source, not $EVOLVE_PROFILE's
            hint = f"run `evolve prepare --profile {config.profile} --source {shlex.quote(config.source)}`"
            self.fingerprint = prepare.load_manifest(self.data_dir, hint=hint).fingerprint
        except PrepareError as exc:
            raise EvolveError(str(exc)) from None
        db = workspace.state_dir / DB_FILE
        if not db.exists() and not Backups(db).list() and len(self.repo.own_ids()) > 1:
            raise EvolveError(
                f"the store {db} is missing, but git holds {len(self.repo.own_ids())} individuals of run "
                f"{self.run_name!r}: `evolve doctor --repair` re-adopts them (a new store is never "
                f"started over an evolution)"
            )
        self.store = Store(db)
        self.backups = Backups(db, keep=config.backups_kept)
        self._last_backup = 0.0
        try:
            self.policy = PromotionPolicy(
                baseline_seeds=config.baseline_seeds, max_seeds=config.max_seeds, alpha=config.alpha,
                gain=config.gain, futility=config.futility, confirm_seeds=config.confirm_seeds,
            )  # fmt: skip
        except ValueError as exc:
            raise EvolveError(f"{exc}; fix evolve.toml's [search] or the flag") from None
        self.weights = OperatorWeights()
        self.on_event = on_event
        self.lock = threading.RLock()  # the strategy, the proposal counter, the intake
        self.strategy: Strategy | None = None
        self.scheduler: Scheduler | None = None
        self.session: Session | None = None
        self.operators: dict[str, Operator] = {}
        self.pool: WorktreePool | None = None
        self.baseline_id = BASELINE_ID  # the run's own, once `setup` has read it from git
        self._proposals = 0
        self._experiments = 0
        self._tried: set[str] = set()  # operators drawn at least once in this run
        self._exhausted: set[str] = set()  # operators seen exhausted (their event is recorded)
        self._exhausted_lock = threading.Lock()  # not the engine lock: the scheduler asks under its own
        self._signals: dict = {}
        self._intake_lock = threading.Lock()
        self._attempts = 0  # decisions, refusals and failed proposals seen (operators' credits)
        self._credit_cache: tuple[int, dict] | None = None
        self._thread = threading.local()  # events of the change in progress on this thread
        self._aside = 0  # runs set aside in a row (see the module docstring)

    # --- events ---------------------------------------------------------------------------------
    def event(self, kind: str, **payload: Any) -> None:
        """Record an event; show it (on_event) now, or after the change it belongs to commits."""
        self.store.add_event(kind, payload, run=self.run_name)
        if kind in ("decision", PROPOSAL_FAILED) or (
            kind == "proposed" and payload.get("status") == "rejected"
        ):
            self._attempts += 1  # an operator's credit may have changed
        pending = getattr(self._thread, "pending", None)
        if pending is not None:
            pending.append((kind, payload))
        elif self.on_event is not None:
            self.on_event(kind, payload)

    @contextmanager
    def _change(self) -> Iterator[None]:
        """One state change: under the engine lock, in one transaction; its events shown after."""
        self._thread.pending = []
        try:
            with self.lock, self.store.transaction():
                yield
            shown = self._thread.pending
        finally:
            self._thread.pending = None
        for kind, payload in shown if self.on_event is not None else ():
            self.on_event(kind, payload)

    # --- set-up and resume ----------------------------------------------------------------------
    def session_key(self) -> ScoreKey:
        """The key this session's runs will be scored under, as far as the executor can tell (its
        device model is "" when it does not know it, or under a token budget)."""
        c, unit = self.config, self.profile.budget_unit
        models = tuple(getattr(self.executor, "device_models", ())) if unit == "seconds" else ()
        if len(models) > 1:
            raise EvolveError(
                f"the devices of this session are of {len(models)} models ({', '.join(models)}); under a time "
                f"budget scores compare only on one: pass --gpus with one model's devices"
            )
        return ScoreKey.of(c.depth, c.budget, unit, models[0] if models else "", "")

    def _refuse_other_key(self) -> None:
        """A run whose scores are under another key than this session's runs would be: refused."""
        run_key = self.store.score_key(self.config.depth, self.run_name)
        now = self.session_key()
        if run_key is None:
            return
        model = getattr(self.executor, "matches_model", None)
        fits = run_key.admits(now._replace(device=run_key.device)) and (
            not now.device
            or not run_key.device
            or (model(run_key.device) if model else now.device == run_key.device)
        )
        if not fits:
            raise EvolveError(
                f"run {self.run_name!r} is scored at {run_key}, this session would score at {now}: they do not "
                f"compare; resume it with its own budget and device model, or start a new run: "
                f"evolve init {self.ws.root} --run NEWNAME"
            )

    def _open_run(self) -> None:
        c = self.config
        self._refuse_other_key()
        identity = {"profile": c.profile, "depth": c.depth, "budget": c.budget, "strategy": c.strategy,
                    "data_fingerprint": self.fingerprint}  # fmt: skip
        run = self.store.get_run(self.run_name)
        # Not identity: a resume may change them; `evolve status` shows the latest session's.
        latest = {"islands": c.islands if c.strategy == "population" else 1, "operator_weights": c.weights,
                  "alpha": c.alpha}  # fmt: skip
        if run is None:
            settings = {**identity, "source": c.source, **latest}
            self.store.add_run(
                self.run_name, strategy=c.strategy, profile=c.profile, settings=settings, exist_ok=True
            )
            return
        changed = [
            f"{k} {run.settings.get(k)!r} -> {v!r}"
            for k, v in identity.items()
            if k in run.settings and run.settings[k] != v
        ]
        if changed:
            raise EvolveError(
                f"run {self.run_name!r} was started with other settings ({'; '.join(changed)}); "
                f"resume it with its own, or start a new run: evolve init {self.ws.root} --run NEWNAME"
            )
        # A run `evolve doctor --repair` rebuilt from git has no identity yet: this session's is it.
        missing = {k: v for k, v in {**identity, "source": c.source}.items() if k not in run.settings}
        if missing or any(run.settings.get(k) != v for k, v in latest.items()):
            self.store.update_run_settings(self.run_name, **missing, **latest)

    def setup(self) -> None:
        """Everything before the scheduler: run row, operators, resume, baseline, population."""
        self._open_run()
        setup_for = lambda name: OperatorSetup(
            root=self.ws.root,
            state_dir=self.ws.state_dir,
            run=self.run_name,
            settings=self.ws.settings,
            store=self.store,
            depth=self.config.depth,
            options={k: v for k, v in self.config.operator_options.get(name, {}).items() if k != "weight"},
        )
        self.operators = {}
        for name in self.config.operators or available():
            if self.config.weight(name) == 0:
                self.event("operator_skipped", operator=name, reason=f"[operators.{name}] weight = 0")
                continue
            try:
                self.operators[name] = make_operator(name, setup_for(name))
            except EvolveError as exc:
                if self.config.operators:  # asked for by name: the user must fix it
                    raise EvolveError(f"operator {name}: {exc}") from None
                self.event("operator_skipped", operator=name, reason=str(exc))
        if not self.operators:
            raise EvolveError(
                "no operator could be built; see `evolve status` and evolve.toml's [search] operators"
            )
        # A branch deleted or moved by hand: its score would be read as another commit's. Refuse.
        refuse_disagreement(self.store, self.ws.root, self.run_name)
        # Ids are never reused: not those the store holds, even where a branch was deleted by hand.
        self.repo.reserve(self.store.highest_id())
        baseline = self.repo.ensure_baseline()
        self.baseline_id = baseline.id
        # a SIGKILLed session's runs
        leftovers = kill_leftover_runs(self.ws.root / POOL_DIR, self.ws.state_dir / "logs")
        if leftovers:
            self.event("leftover_runs_killed", pids=leftovers)
        self.pool = WorktreePool(self.repo, self.executor.slots, start=baseline.commit)
        requeued = self.store.requeue_in_flight(self.run_name)
        if requeued:
            self.event("resume", requeued=requeued)
        row = self.store.get(baseline.id)
        if row is None:
            self.store.add_individual(
                id=baseline.id,
                run=self.run_name,
                commit=baseline.commit,
                branch=baseline.branch,
                operator=baseline.operator,
                description=baseline.description,
                status=Status.QUEUED,
                code_hash=self._code_hash(baseline.commit),
                origin=baseline.origin,
            )
        elif row.run != self.run_name:  # a workspace made before ids were unique across runs
            raise EvolveError(
                f"generation 0 of run {self.run_name!r} is {baseline.branch}, but {baseline.id} is run "
                f"{row.run!r}'s; delete the branch (git branch -D {baseline.branch}) and run "
                f"`evolve init --run {self.run_name}` again"
            )
        self._proposals = len(self.store.events(self.run_name, kind="proposed")) + len(
            self.store.events(self.run_name, kind=PROPOSAL_FAILED)
        )
        self._experiments = sum(
            1 for i in self.store.individuals(self.run_name) if i.parents and i.status != Status.REJECTED
        )
        self._tried = set(self.store.operator_stats(self.run_name)) | {
            str(e.payload.get("operator")) for e in self.store.events(self.run_name, kind=PROPOSAL_FAILED)
        }

    def _adopt_orphans(self) -> None:
        """Children committed to git whose store row never landed (a crash between the two)."""
        known = {i.id for i in self.store.individuals(self.run_name)}
        for genome in self.repo.genomes():
            if genome.id in known or not genome.parents:
                continue
            rows = [self.store.get(p) for p in genome.parents]
            island = rows[0].island if rows and rows[0] is not None else 0
            kind = (
                LineageKind.MERGE
                if len(genome.parents) > 1 and genome.operator == "merge_crossover"
                else None
            )
            self._intake(Proposal(genome, kind=kind or _kind(genome.parents)), island, adopted=True)

    # --- the baseline ---------------------------------------------------------------------------
    def _mark_running(self, individual: str) -> Individual:
        ind = self.store.get(individual)
        assert ind is not None
        if ind.status in (Status.EVALUATED, Status.FAILED, Status.PROPOSED):
            ind = self.store.set_status(individual, Status.QUEUED)
        if ind.status == Status.QUEUED:
            ind = self.store.set_status(individual, Status.RUNNING)
        return ind

    def _baseline_ok(self) -> int:
        key = self.store.score_key(self.config.depth, self.run_name)
        return sum(
            1
            for e in self.store.evaluations(self.baseline_id)
            if e.ok and e.depth == self.config.depth and (key is None or key.admits(e.key))
        )

    def evaluate_baseline(self) -> None:
        """Run the baseline's missing seeds in parallel, then accept it (its mean is the first best).

        A stop request lets the runs in flight finish and be recorded; an abandon drops them."""
        assert self.scheduler is not None and self.session is not None
        pending = self.policy.baseline_pending(self._baseline_ok())
        # this session's attempts: an earlier one's failures (a broken machine since mended) do not count
        attempts = 0
        while pending > 0 and not self.scheduler.stopping.is_set():
            if attempts >= 2 * self.config.baseline_seeds + 2:
                last = self.store.evaluations(self.baseline_id)[-1]
                self.event("reference_run", reason="the baseline keeps failing")
                logs = (
                    self.ws.state_dir
                    / "logs"
                    / self.baseline_id
                    / f"reference-s{FIRST_SEED}-{self.session.id}"
                )
                like = self._job(self.ws.root, FIRST_SEED, logs)
                raise EvolveError(baseline_failure(last, reference_run(self.executor, like)))
            base = self._mark_running(self.baseline_id)
            seeds = self._next_seeds(self.baseline_id, min(pending, self.executor.slots))
            running = [
                (seed, *self._submit(slot, base, seed, Purpose.BASELINE)) for slot, seed in enumerate(seeds)
            ]
            for seed, future, started in running:
                while not future.done():  # poll, so that a signal is handled while we wait
                    futures.wait([future], timeout=0.5)
                result = self._result(future)
                if self.scheduler.abandoned.is_set():
                    return
                report = self._record(base, result, seed, Purpose.BASELINE, started)
                self.session.add(report)
                self.session.save()
                attempts += report.recorded  # a run set aside has not failed (`_set_aside` bounds those)
            pending = self.policy.baseline_pending(self._baseline_ok())
        base = self.store.get(self.baseline_id)
        assert base is not None
        if pending == 0 and base.status in (Status.QUEUED, Status.RUNNING):
            # requeued by a resume after its last seed had landed: nothing left to run
            self._mark_running(self.baseline_id)
            self.store.set_status(self.baseline_id, Status.EVALUATED)
        if pending == 0 and base.decision is None:
            score = self.store.scores(self.config.depth, self.run_name).get(self.baseline_id)
            self.store.set_decision(self.baseline_id, "accept")
            self.event("decision", id=self.baseline_id, action="accept", reason=f"baseline {score}",
                       mean=score.mean if score else None)  # fmt: skip

    # --- device runs ----------------------------------------------------------------------------
    def _next_seeds(self, individual: str, n: int) -> list[int]:
        used = set(self.store.seeds_used(individual, self.config.depth))
        seeds, k = [], 0
        while len(seeds) < n:
            if FIRST_SEED + k not in used:
                seeds.append(FIRST_SEED + k)
            k += 1
        return seeds

    def _submit(self, slot: int, ind: Individual, seed: int, purpose: Purpose):
        assert self.pool is not None
        worktree = self.pool.checkout(slot, ind.commit)
        session = self.session.id if self.session else 0
        log_dir = self.ws.state_dir / "logs" / ind.id / f"{purpose.value}-s{seed}-{session}"
        return self.executor.submit(self._job(worktree, seed, log_dir)), time.time()

    def _job(self, worktree: Path, seed: int, log_dir: Path) -> Job:
        return Job(
            worktree=worktree, depth=self.config.depth, budget=self.config.budget, seed=seed,
            profile=self.profile, data_dir=self.data_dir, log_dir=log_dir, allowance=self.config.allowance,
        )  # fmt: skip

    def _result(self, future) -> RunResult:
        try:
            return future.result()
        except TrainerError as exc:  # the request or the environment, never the child: nothing recorded
            raise EvolveError(f"the trainer refused a run (nothing was recorded): {exc}") from None
        except OSError as exc:  # the trainer could not write its log: the disk, not the child
            problem = os_problem(exc, self.ws.state_dir)
            if problem is None:
                raise
            raise problem from None

    def _record(
        self, ind: Individual, result: RunResult, seed: int, purpose: Purpose, started: float
    ) -> EvalReport:
        if not result.ok and shutil.disk_usage(self.ws.state_dir).free < FULL_DISK_BYTES:
            # A run that failed while the disk is full says nothing of the child: not recorded,
            # it stays running and is run again once there is room.
            raise os_problem(
                OSError(errno.ENOSPC, "no space left", str(self.ws.state_dir)), self.ws.state_dir
            )
        data = result.to_dict()
        data["log_path"] = compress_log(result.log_path)
        evaluation = Evaluation.from_result(ind.id, data, purpose=purpose)
        if not evaluation.commit:  # the trainer could not tell: the worktree held what we checked out
            evaluation = replace(evaluation, commit=ind.commit)
        elif evaluation.commit != ind.commit:  # a score is only ever the individual's own commit's
            evaluation = replace(evaluation, status="invalid", val_bpb=None,
                                 reason=f"the trainer ran {evaluation.commit[:10]}, not {ind.id}'s {ind.commit[:10]}")  # fmt: skip
        if self._set_aside(ind, evaluation, result):
            return EvalReport(wall_seconds=result.wall_seconds, recorded=False)
        with self._change():
            self.store.record_evaluation(evaluation)
            self.event("evaluated", id=ind.id, seed=seed, purpose=purpose.value, status=evaluation.status,
                       val_bpb=evaluation.val_bpb, reason=evaluation.reason, device=evaluation.device,
                       wall=round(time.time() - started, 1))  # fmt: skip
            now = self.store.get(ind.id)
            assert now is not None
            if now.parents and now.decision is None:
                outcomes = self._promote(ind.id)
            elif now.decision is not None:
                outcomes = self._serviced(ind.id)  # a parent's paired seed, or a champion's fresh one
            else:
                outcomes = []  # the baseline's first seeds: `evaluate_baseline` decides
        for outcome in outcomes:
            self._tell(outcome)
        training = evaluation.training_seconds if evaluation.status == "ok" else 0.0
        return EvalReport(wall_seconds=result.wall_seconds, training_seconds=float(training or 0.0))

    def _set_aside(self, ind: Individual, evaluation: Evaluation, result: RunResult) -> bool:
        """A run under another key than the run's (see the module docstring): not recorded, its
        individual queued again for the same seed. True when it was set aside."""
        key = self.store.score_key(self.config.depth, self.run_name)
        with self.lock:
            if key is None or key.admits(evaluation.key):
                self._aside = 0
                return False
            self._aside += 1
        with self._change():
            self.store.set_status(ind.id, Status.QUEUED)
            self.event("aside", id=ind.id, seed=evaluation.seed, purpose=evaluation.purpose.value,
                       key=str(evaluation.key), run_key=str(key), status=evaluation.status,
                       val_bpb=evaluation.val_bpb, node=result.extra.get("node"), log_path=evaluation.log_path,
                       reason=f"scored at {evaluation.key}, the run's scores are at {key}")  # fmt: skip
        limit = max(ASIDE_IN_A_ROW, self.executor.slots)
        if self._aside > limit:
            raise EvolveError(
                f"{self._aside} runs in a row came back at {evaluation.key}, the run's scores are at {key}: "
                f"run it on {key.device or 'the same devices'} only (with --executor ray: --accelerator-type), "
                f"or start a new run: evolve init {self.ws.root} --run NEWNAME"
            )
        return True

    def claim(self) -> Individual | None:
        return self.store.claim(self.run_name)

    def evaluate(self, slot: int, ind: Individual) -> EvalReport:
        """One device run of a claimed individual: its next seed, recorded with its decision."""
        has_search = any(e.purpose != Purpose.VALIDATION for e in self.store.evaluations(ind.id))
        purpose = Purpose.BASELINE if not ind.parents else Purpose.REEVAL if has_search else Purpose.SEARCH
        seed = self._next_seeds(ind.id, 1)[0]
        future, started = self._submit(slot, ind, seed, purpose)
        result = self._result(future)
        if self.scheduler is not None and self.scheduler.abandoned.is_set():
            return EvalReport(wall_seconds=result.wall_seconds, recorded=False)  # stays running -> requeued
        return self._record(ind, result, seed, purpose, started)

    def _tell(self, outcome: Outcome) -> None:
        op = self.operators.get(outcome.child.operator)
        if op is None:
            return
        try:
            op.on_outcome(outcome)
        except Exception as exc:  # the operator's own state (e.g. optuna.db on a full disk)
            self.event("outcome_not_told", id=outcome.child.id, operator=op.name, error=str(exc)[:300])

    # --- proposals ----------------------------------------------------------------------------------
    def _code_hash(self, commit: str) -> str:
        return code_hash(self.repo, commit, self.mutable)

    def _parent(self, member_id: str, scores: Mapping[str, Score]) -> Parent:
        ind = self.store.get(member_id)
        if ind is None:
            raise EvolveError(f"the population names {member_id}, which the store does not hold")
        return Parent(ind, scores.get(member_id))

    def _usable(self) -> list[str]:
        """The operators that can still propose; records the first time one is exhausted."""
        names = [n for n, op in self.operators.items() if not op.exhausted]
        with self._exhausted_lock:
            new = sorted(set(self.operators) - set(names) - self._exhausted)
            self._exhausted.update(new)
        for name in new:
            self.event("operator_exhausted", operator=name, remaining=names,
                       llm_usd=round(float(self.store.llm_spend(self.run_name)["cost"]), 6))  # fmt: skip
        return names

    def _credits(self) -> dict:
        """The operators' credits, read again from the store once 2% more attempts were seen
        (at once while there are fewer than 50): exact early on, and at 10,000 children not one
        pass over the whole run per proposal."""
        cached = self._credit_cache
        if cached is not None:
            at, credits = cached
            total = sum(c.attempts for c in credits.values())
            if self._attempts - at < max(1, total // 50):
                return credits
        credits = credits_from_store(self.store, self.run_name)
        self._credit_cache = (self._attempts, credits)
        return credits

    def _draw(self, names: list[str], credits: Mapping[str, Any], rng: random.Random) -> str:
        name = self.weights.draw(names, credits, rng, self.config.weights)
        if name in self._tried:
            # Every operator gets an early try: the first time one not yet tried could propose,
            # it takes the drawn one's place (the draw stays, so the run's random stream does too).
            # A crossover's early try waits for two members that are not ancestor and descendant.
            fresh = [n for n in names if n not in self._tried]
            if any(self.operators[n].arity >= 2 for n in fresh) and not self._pairs_exist():
                fresh = [n for n in fresh if self.operators[n].arity == 1]
            if fresh:
                name = max(fresh, key=lambda n: (self.config.weight(n), n))
        return name

    def _pairs_exist(self) -> bool:
        """True when two members of the population could be crossed (neither descends from the other)."""
        assert self.strategy is not None
        if self.config.strategy == "ratchet" or len(self.strategy) < 2:
            return False
        family = Family.of(self.store, self.run_name)
        return family.unrelated_pair([m.id for m in self.strategy.members()]) is not None

    def _context(self, rng: random.Random, calls: list[int]) -> tuple[Operator, ProposalContext] | None:
        """Draw an operator and its parents (under the engine lock); its LLM calls' ids go to `calls`."""
        assert self.strategy is not None
        credits = self._credits()
        names = self._usable()
        if not names:
            return None
        op = self.operators[self._draw(names, credits, rng)]
        members: tuple[Member, ...]
        partners: list[Member] = []
        if op.arity >= 2:
            pair = self.strategy.select_pair()
            family = Family.of(self.store, self.run_name)
            crossable = choose_parents(family, self.strategy.members(), pair) if pair else None
            if crossable is None:  # no two members that can be crossed: a one-parent operator instead
                singles = [n for n in names if self.operators[n].arity == 1]
                if not singles:
                    return None
                op = self.operators[self._draw(singles, credits, rng)]
                members = (self.strategy.select_parent(),)
            else:
                first, second, partners = crossable
                members = (first, second)
        else:
            members = (self.strategy.select_parent(),)
        island = members[0].island
        scores = self.store.scores(self.config.depth, self.run_name)
        elite_ids = [m.id for m in self.strategy.elites(self.config.elites, island=island if
                     self.config.strategy == "population" else None)]  # fmt: skip
        elite_ids += [m.id for m in self.strategy.elites(self.config.elites) if m.id not in elite_ids]
        model = self._evidence().model()  # the noise the judge uses, for the prompts
        name = op.name

        def report(**kw: Any) -> int:
            call = self.store.add_llm_call(run=self.run_name, operator=name, **kw)
            if kw.get("purpose") != "insights":  # the run's notes, not this child's
                calls.append(call)
            return call

        ctx = ProposalContext(
            repo=self.repo,
            store=self.store,
            run=self.run_name,
            settings=self.ws.settings,
            parents=tuple(self._parent(m.id, scores) for m in members),
            island=island,
            depth=self.config.depth,
            rng=rng,
            noise_floor=model.sigma,
            elites=tuple(self._parent(i, scores) for i in elite_ids[: self.config.elites]),
            report_llm=report,
            settle_llm=lambda call, outcome, why="": self.store.settle_llm_call(call, outcome, why),
            partners=tuple(self._parent(m.id, scores) for m in partners),
            acceptance=self.policy.describe(model),
            baseline=self.baseline_id,
        )
        self._tried.add(op.name)
        return op, ctx

    def propose(self) -> bool:
        """Make one proposal and take it in; True when a child was queued for training."""
        with self.lock:
            number = self._proposals
            self._proposals += 1
            rng = random.Random(f"{self.config.seed}:{number}")
            calls: list[int] = []  # the LLM calls of this proposal, named after its child below
            drawn = self._context(rng, calls)
        if drawn is None:
            return False
        op, ctx = drawn
        parents = [p.id for p in ctx.parents]
        try:
            proposal = op.propose(ctx)
        except Exception as exc:  # OperatorError is expected; anything else is the operator's bug
            kind = "" if isinstance(exc, EvolveError) else f"{type(exc).__name__}: "
            self.event(PROPOSAL_FAILED, operator=op.name, parents=parents, error=f"{kind}{exc}"[:500])
            return False
        if proposal.genome.operator != op.name:
            proposal = replace(proposal, genome=replace(proposal.genome, operator=op.name))
        return self._intake(proposal, ctx.island, calls=calls)

    def _intake(
        self, proposal: Proposal, island: int, adopted: bool = False, calls: list[int] | None = None
    ) -> bool:
        """Novelty check, static guard, then the queue (or a rejected row). True when queued."""
        genome = proposal.genome
        # Its own lock: two proposals of the same code must not both pass the novelty check.
        with self._intake_lock:
            admission = admit(self.store, self.repo, self.run_name, genome, self.mutable)
            status, reason, code_hash, duplicate = (
                admission.status,
                admission.reason,
                admission.code_hash,
                admission.duplicate,
            )
            with self._change():
                ind = self.store.add_individual(
                    id=genome.id,
                    run=self.run_name,
                    commit=genome.commit,
                    branch=genome.branch,
                    parents=genome.parents,
                    operator=genome.operator,
                    description=genome.description,
                    island=island,
                    status=status,
                    code_hash=code_hash,
                    kind=proposal.kind,
                    guard_reason=reason,
                )
                # Calls of the proposal count for its child (not the meta-insights it triggered).
                self.store.assign_llm_calls(calls or (), genome.id)
                self.event("proposed", id=genome.id, operator=genome.operator, parents=list(genome.parents),
                           status=status.value, reason=reason or "", description=genome.description,
                           notes=dict(proposal.notes), adopted=adopted)  # fmt: skip
                if status is Status.QUEUED:
                    self._experiments += 1
        if status is Status.REJECTED:
            scores = self.store.scores(self.config.depth, self.run_name)
            self._tell(Outcome(ind, ind.parents, scores.get(duplicate.id) if duplicate else None, False))
        return status is Status.QUEUED

    def queued(self) -> int:
        return len(self.store.individuals(self.run_name, status=Status.QUEUED))

    @property
    def exhausted(self) -> bool:
        """True when every operator is spent (e.g. only LLM operators, at --max-llm-usd): the
        scheduler stops asking for proposals, trains what is queued and stops."""
        return bool(self.operators) and not self._usable()

    def experiments(self) -> int:
        return self._experiments

    def target_reached(self, target: float) -> bool:
        with self.lock:
            means = [m.mean for m in self.strategy.members()] if self.strategy is not None else []
        return any(m is not None and m <= target for m in means)

    # --- the whole run ----------------------------------------------------------------------------
    def start(self, on_tick: Callable[[], None] | None = None, install_signals: bool = False) -> None:
        """Everything before the steady state: set-up, resume, the baseline, the population.

        `run()` calls it; a test may call it and then drive `self.scheduler.run()` itself. With
        `install_signals`, SIGINT/SIGTERM are handled from here on (the baseline included)."""
        self.setup()
        devices = getattr(self.executor, "devices", None) or tuple(
            f"slot{i}" for i in range(self.executor.slots)
        )
        self.session = Session(self.store, self.run_name, devices)
        c = self.config
        self.backup("session start")

        def tick() -> None:  # the scheduler's main loop, about every half second
            if time.time() - self._last_backup >= c.backup_minutes * 60:
                self.backup(f"every {c.backup_minutes:g} minutes")
            if on_tick is not None:
                on_tick()

        self.scheduler = Scheduler(self, self.session, stop=c.stop, ahead=c.ahead, proposers=c.proposers,
                                   on_tick=tick)  # fmt: skip
        self.scheduler.on_abandon = self.executor.abandon
        self.event("session_start", session=self.session.id, devices=list(devices), pid=os.getpid())
        if install_signals:
            self._signals = self.scheduler.install_signals()
        try:
            self.evaluate_baseline()
        except BaseException:
            self.scheduler.abandon()  # kill the baseline runs still going
            raise
        self.strategy = from_store(self.store, self.run_name, c.depth, c.strategy, policy=self.policy,
                                   **self._strategy_options())  # fmt: skip
        if not self.scheduler.stopping.is_set():
            self._adopt_orphans()
            self._decide_undecided()

    def backup(self, reason: str) -> None:
        """An online backup of the store (see evolve.storefile); a failure is an event, not a stop."""
        self._last_backup = time.time()
        try:
            path = self.backups.make(reason)
        except EvolveError as exc:
            try:
                self.event("backup_failed", reason=reason, error=str(exc))
            except EvolveError:
                pass  # the store itself is failing: the next write stops the run with the cause
            return
        self.event("backup", reason=reason, path=str(path), bytes=path.stat().st_size)

    def finish(self, reason: StopReason) -> None:
        """After the steady state: what was in flight goes back to the queue; operators close; a
        backup. When the run stops on an error (a full disk), what cannot be done now is left
        for the next `evolve run`, and the first error is the one reported."""
        failures: list[Exception] = []

        def attempt(step: Callable[[], Any]) -> None:
            try:
                step()
            except (EvolveError, GenomeError) as exc:
                failures.append(exc)

        attempt(lambda: self.store.requeue_in_flight(self.run_name))
        if self.session is not None:
            session = self.session.id
            attempt(lambda: self.event("session_end", session=session, reason=reason.value))
        if self.scheduler is not None:
            self.scheduler.restore_signals(self._signals)
            self._signals = {}
        for op in self.operators.values():
            attempt(op.close)
        if self.pool is not None and reason is not StopReason.ABANDONED:
            attempt(self.pool.close)
        if self.session is not None:
            self.backup("session end")
        if failures and reason is not StopReason.ERROR:
            raise failures[0]

    def run(self, on_tick: Callable[[], None] | None = None, install_signals: bool = True) -> StopReason:
        """Resume or start the run and evolve until a stop condition; returns why it stopped."""
        with workspace_lock(self.ws.state_dir):
            reason = StopReason.ERROR
            try:
                self.start(on_tick, install_signals=install_signals)
                assert self.scheduler is not None
                reason = self.scheduler.run(install_signals=False)
                return reason
            finally:
                self.finish(reason)

    def _strategy_options(self) -> dict[str, Any]:
        if self.config.strategy == "ratchet":
            return {"seed": self.config.seed}
        return {
            "islands": self.config.islands,
            "migrate_every": self.config.migrate_every,
            "seed": self.config.seed,
        }

    def close(self) -> None:
        self.store.close()


def _kind(parents: tuple[str, ...]) -> LineageKind:
    return LineageKind.MUTATION if len(parents) <= 1 else LineageKind.CROSSOVER
