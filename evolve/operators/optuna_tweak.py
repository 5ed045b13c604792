"""The Optuna tweak: TPE over the parent's hyperparameter block, told the truth about each child.

One study per lineage: children that differ from each other only in their UPPER_CASE constants
share a code skeleton, and so a study (named after a hash of the code without those constants).
The study's search space is set when it opens, from the values it first saw: log-scale ranges
for rates and other positive floats, a range around the value for fractions, integers (powers of
two stay powers of two) for sizes, both choices for flags.

Each proposal changes a few knobs (TPE samples each from its own history) and commits the child.
Every trial carries the child's whole vector: the knobs it keeps are fixed to the parent's values
(enqueued as fixed parameters), so TPE sees where every child sits, not only what it moved.

The value told is the child's paired improvement over its parent: the mean of child - parent over
the seeds both ran (lower is better). Not the child's own mean, and not one study per parent:
children of different parents share a study, and their absolute scores would mostly tell TPE
which parent was good; the paired difference takes the parent's level (and the seed's luck,
which the two runs share) out and leaves what the tweak did. One study per parent would ask TPE
to learn from the handful of children one parent gets, fewer than its random start-up trials.
A child that crashed or diverged is told a penalty (worse than every real value the study has
seen, and at least `PENALTY`), so TPE learns to stay out of that region; FAIL would tell it
nothing. A child never trained (a duplicate, a guard refusal) is FAIL. The studies live in
`.evolve/optuna.db`: `optuna-dashboard sqlite:///.evolve/optuna.db` shows them.

A study looks back over a window: once it holds `WINDOW` finished trials, the lineage goes on in
a new study (`NAME.2`, `NAME.3`, ...) that starts from the `CARRIED` best of them. TPE's cost per
suggestion grows with the trials it models (0.047 s of CPU at 250 trials, 0.111 s at 4,000, on
this project's 2-core machine), and a lineage that only Optuna moves can run for days; the oldest
trials were told improvements over parents long since surpassed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

from genome import pyast
from genome.errors import GenomeError
from genome.hyperparams import commit_hyperparams, parse_hyperparams

from .base import (
    Operator,
    OperatorError,
    OperatorSetup,
    Outcome,
    Proposal,
    ProposalContext,
    register,
)

NAME = "optuna_tweak"
STORAGE_FILE = "optuna.db"
PENALTY = 1.0  # the least a failed child is told (bpb worse than its parent)
WINDOW = 1000  # finished trials of a study before the lineage goes on in the next one ...
CARRIED = 100  # ... which starts from this many of its best
_RATE_WORDS = ("LR", "DECAY", "RATE")


def lineage_key(source: str, names: set[str]) -> str:
    """A hash of the code with the top-level assignments of `names` taken out."""
    try:
        tree = pyast.parse(source)
    except SyntaxError as exc:
        raise OperatorError(f"train.py does not parse (line {exc.lineno}); nothing to tweak") from None

    def is_knob(stmt: ast.stmt) -> bool:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if isinstance(stmt, ast.AnnAssign):
            target = stmt.target
        return isinstance(target, ast.Name) and target.id in names

    tree.body = [s for s in tree.body if not is_knob(s)]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def space_for(name: str, value: Any) -> dict[str, Any] | None:
    """The search range of one constant as JSON-able data, or None when it is not tuned.

    {"kind": "float", "low", "high", "log"} | {"kind": "int", "low", "high", "log"} |
    {"kind": "choice", "choices": [...]}"""
    if isinstance(value, bool):
        return {"kind": "choice", "choices": [False, True]}
    if isinstance(value, int):
        if value < 1:
            return {"kind": "int", "low": 0, "high": 4, "log": False} if value == 0 else None
        if value >= 2 and value & (value - 1) == 0:  # a power of two: stay on powers of two
            return {"kind": "choice", "choices": [value // 2, value, value * 2]}
        return {
            "kind": "int",
            "low": max(1, value // 2),
            "high": max(value * 2, value + 2),
            "log": value >= 8,
        }
    if isinstance(value, float) and math.isfinite(value):
        rate = any(word in name.split("_") for word in _RATE_WORDS)
        if value > 0 and (rate or value > 1):
            return {"kind": "float", "low": value / 4, "high": value * 4, "log": True}
        if value == 0:
            return {"kind": "float", "low": 0.0, "high": 0.25, "log": False}
        if 0 < value <= 1:  # a fraction, a momentum, an init scale: halfway towards 0 and 1
            return {"kind": "float", "low": value / 2, "high": (1 + value) / 2, "log": False}
    return None  # strings, tuples, None and negative numbers are left to the LLM


def _suggest(trial: Any, name: str, space: dict[str, Any]) -> Any:
    if space["kind"] == "choice":
        return trial.suggest_categorical(name, space["choices"])
    if space["kind"] == "int":
        return trial.suggest_int(name, space["low"], space["high"], log=space["log"])
    return trial.suggest_float(name, space["low"], space["high"], log=space["log"])


def _create_storage(optuna: Any, path: Path) -> None:
    """Create the Optuna database whole, or not at all: its schema is built in a file beside it
    that replaces `path` only once complete. (Built in place, a kill between the `studies` table
    and its unique index leaves a database in which every later session adds the study again.)"""
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    os.replace(tmp, path)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to optuna.db in WAL mode with synchronous=NORMAL, as the store's: Optuna commits
    after every suggestion, and each commit of SQLite's default (rollback journal, FULL) waits for
    the disk (a third of the controller's samples in bench/soak.py). Durable against a killed
    process; a power loss may cost the last trials, which only guide the sampler (the store holds
    every child and score)."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _fits(value: Any, space: dict[str, Any]) -> bool:
    """Whether a kept value can be the trial's parameter (a choice must be one of the study's)."""
    if space["kind"] == "choice":
        return value in space["choices"]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _told(improvement: float | None, failed: bool) -> float | str | None:
    if failed:
        return "penalty"
    return improvement


def _paired(ev: Any, child_id: str) -> tuple[float | None, bool]:
    """(paired improvement, failed) of a decided child, as the engine computes it."""
    from ..promotion import paired_difference

    values = ev.values(child_id)
    parent = ev.reference(child_id)
    diff = paired_difference(values, ev.values(parent)) if parent else None
    return (diff[0] if diff else None), any(v is None for v in values.values())


def _round(value: Any) -> Any:
    # 4 significant digits: a readable commit and code that differs by more than float noise.
    if isinstance(value, float) and value != 0:
        return float(f"{value:.4g}")
    return value


@register(NAME)
class OptunaTweak(Operator):
    """Change 1..max_changes knobs of the parent's hyperparameter block, as TPE suggests.

    Options ([operators.optuna_tweak] in evolve.toml): `include` (only these knobs), `exclude`,
    `max_changes` (default 2), `startup_trials` (random trials before TPE models, default 8)."""

    name = NAME
    arity = 1
    OPTIONS = frozenset({"include", "exclude", "max_changes", "startup_trials"})  # evolve.toml's keys

    def __init__(self, setup: OperatorSetup) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.setup = setup
        self.path = setup.settings.mutable[0]
        self.include = {str(n) for n in setup.options.get("include", ())}
        self.exclude = {str(n) for n in setup.options.get("exclude", ())}
        self.max_changes = max(1, int(setup.options.get("max_changes", 2)))
        self.startup_trials = int(setup.options.get("startup_trials", 8))
        setup.state_dir.mkdir(parents=True, exist_ok=True)
        path = setup.state_dir / STORAGE_FILE
        if not path.exists():
            _create_storage(optuna, path)
        self.url = f"sqlite:///{path}"
        self.storage = optuna.storages.RDBStorage(self.url, engine_kwargs={"creator": lambda: _connect(path)})
        self._lock = threading.Lock()
        self._trials: dict[str, tuple[str, int]] = {}  # child id -> (study name, trial number)
        self._studies: dict[str, Any] = {}  # study name -> its Study, kept for the run
        self._generations: dict[str, int] = {}  # lineage -> the number of its newest study
        self._reconcile()

    # --- studies --------------------------------------------------------------------------------
    def _study(self, name: str, seed: int | None = None):
        # One Study object per study for the whole run: each new one wraps the storage in a new,
        # empty trial cache and reads every trial back from optuna.db, a cost that grows with
        # the run (bench/soak.py). The sampler is set anew, so each proposal keeps its own seed.
        study = self._studies.get(name)
        if study is None:
            study = self._optuna.create_study(
                study_name=name, storage=self.storage, direction="minimize", load_if_exists=True
            )
            self._studies[name] = study
        sampler = self._optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.startup_trials, constant_liar=True
        )
        # The multivariate TPE's search space is the intersection over every finished trial: a
        # sampler keeps it and reads only the trials finished since (Optuna's own cache), a new one
        # reads them all. Each proposal needs its own seed, so its sampler is new: it is handed
        # the last one's cache (a private attribute; without it, the same result, read in full).
        cache = getattr(study.sampler, "_search_space", None)
        if isinstance(cache, self._optuna.search_space.IntersectionSearchSpace) and hasattr(
            sampler, "_search_space"
        ):
            sampler._search_space = cache
        study.sampler = sampler
        return study

    def _current(self, lineage: str) -> str:
        """The study a lineage's next trial goes to: its newest, or a new one once that holds
        WINDOW finished trials (started from the CARRIED best, with the same search space)."""
        generation = self._generations.get(lineage)
        if generation is None:  # the newest this optuna.db holds (1: the lineage's own name)
            generation = 1
            while self._exists(f"{lineage}.{generation + 1}"):
                generation += 1
        name = lineage if generation == 1 else f"{lineage}.{generation}"
        self._generations[lineage] = generation
        if not self._exists(name):
            return name
        states = self._optuna.trial.TrialState
        study = self._study(name)
        finished = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.FAIL, states.PRUNED))
        if len(finished) < WINDOW:
            return name
        best = sorted((t for t in finished if t.state == states.COMPLETE and t.value is not None),
                      key=lambda t: (t.value, t.number))[:CARRIED]  # fmt: skip
        self._generations[lineage] = generation + 1
        nxt = f"{lineage}.{generation + 1}"
        successor = self._study(nxt)
        for attr in ("space", "root"):
            if attr in study.user_attrs:
                successor.set_user_attr(attr, study.user_attrs[attr])
        successor.set_user_attr("carried_from", name)
        successor.add_trials(best)
        return nxt

    def _exists(self, name: str) -> bool:
        if name in self._studies:
            return True
        try:
            self.storage.get_study_id_from_name(name)
        except KeyError:
            return False
        return True

    def _tunable(self, knobs: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, hp in knobs.items():
            if (self.include and name not in self.include) or name in self.exclude:
                continue
            space = space_for(name, hp.value)
            if space is not None:
                out[name] = space
        return out

    def propose(self, ctx: ProposalContext) -> Proposal:
        if len(ctx.parents) != 1:
            raise OperatorError(f"the Optuna tweak needs one parent, got {len(ctx.parents)}")
        parent = ctx.parents[0]
        try:
            source = ctx.repo.read(parent.genome, self.path)
            knobs = parse_hyperparams(source)
        except GenomeError as exc:
            raise OperatorError(f"cannot read {parent.id}'s hyperparameters: {exc}") from None
        tunable = self._tunable(knobs)
        if not tunable:
            raise OperatorError(f"{parent.id} has no tunable constants in {self.path}")
        key = lineage_key(source, set(knobs))
        with self._lock:
            study_name = self._current(f"{ctx.run}-{key[:12]}")
            study = self._study(study_name, seed=ctx.rng.randrange(2**31))
            center = study.user_attrs.get("space")
            if center is None:
                study.set_user_attr("space", json.dumps(tunable, sort_keys=True))
                study.set_user_attr("root", parent.id)
                space = tunable
            else:
                space = {k: v for k, v in json.loads(center).items() if k in tunable}
            names = sorted(space)
            k = min(len(names), ctx.rng.randint(1, self.max_changes))
            chosen = ctx.rng.sample(names, k)
            # The knobs it keeps are fixed to the parent's values: the trial holds the whole vector.
            kept = {n: knobs[n].value for n in names if n not in chosen and _fits(knobs[n].value, space[n])}
            study.enqueue_trial(kept, skip_if_exists=False)
            trial = study.ask()
            values: dict[str, Any] = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a kept value outside the study's first range
                for name in names:
                    if name in chosen:
                        value = _round(_suggest(trial, name, space[name]))
                        if value != knobs[name].value:
                            values[name] = value
                    elif name in kept:
                        _suggest(trial, name, space[name])  # returns the fixed (parent's) value
            if not values:
                study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                raise OperatorError(f"TPE suggested {parent.id}'s own values for {', '.join(chosen)}")
            trial.set_user_attr("parent", parent.id)
            trial.set_user_attr("changed", sorted(values))
            try:
                child = commit_hyperparams(
                    ctx.repo, parent.genome, values, operator=self.name, path=self.path
                )
            except GenomeError as exc:
                study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                raise OperatorError(f"could not commit the tweak of {parent.id}: {exc}") from None
            trial.set_user_attr("child", child.id)
            self._trials[child.id] = (study_name, trial.number)
        notes = {"study": study_name, "trial": trial.number, "values": values}
        return Proposal(child, notes=notes)

    # --- results ----------------------------------------------------------------------------------
    def on_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            found = self._trials.pop(outcome.child.id, None) or self._find(outcome.child.id)
            if found is None:
                return
            self._tell(*found, _told(outcome.improvement, outcome.failed))

    def _tell(self, study_name: str, number: int, value: float | str | None) -> None:
        """Tell a trial its value: a float, "penalty" (a failed child) or None (FAIL)."""
        study = self._study(study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        if self.storage.get_trial(trial_id).state.is_finished():
            return  # told already (a resume replays outcomes)
        if value == "penalty":
            done = study.get_trials(deepcopy=False, states=(self._optuna.trial.TrialState.COMPLETE,))
            worst = max(
                (t.value for t in done if t.value is not None and math.isfinite(t.value)), default=0.0
            )
            self.storage.set_trial_user_attr(trial_id, "penalty", True)
            study.tell(number, max(PENALTY, worst + PENALTY / 10))
        elif value is None or not math.isfinite(float(value)):
            study.tell(number, state=self._optuna.trial.TrialState.FAIL)
        else:
            study.tell(number, float(value))

    def _running(self) -> list[tuple[str, int, dict[str, Any]]]:
        out = []
        for summary in self._optuna.get_all_study_summaries(self.storage, include_best_trial=False):
            if not summary.study_name.startswith(f"{self.setup.run}-"):
                continue
            study_id = self.storage.get_study_id_from_name(summary.study_name)
            running = self.storage.get_all_trials(
                study_id, deepcopy=False, states=(self._optuna.trial.TrialState.RUNNING,)
            )
            out += [(summary.study_name, t.number, t.user_attrs) for t in running]
        return out

    def _find(self, child_id: str) -> tuple[str, int] | None:
        for study_name, number, attrs in self._running():
            if attrs.get("child") == child_id:
                return study_name, number
        return None

    def _reconcile(self) -> None:
        """After a crash: fail trials whose child was never committed (or never asked: an enqueued
        trial left waiting), tell decided ones what the engine would have told them."""
        from ..judging import Evidence

        store, depth = self.setup.store, self.setup.depth
        ev = Evidence(store, self.setup.run, depth)
        with self._lock:
            self._drop_waiting()
            for study_name, number, attrs in self._running():
                child_id = attrs.get("child")
                if child_id is None:
                    self._tell(study_name, number, None)
                    continue
                child = store.get(child_id)
                if child is None:
                    self._trials[child_id] = (study_name, number)  # the engine adopts it later
                elif child.decision is not None or child.status.value == "rejected":
                    self._tell(study_name, number, _told(*_paired(ev, child_id)))
                else:
                    self._trials[child_id] = (study_name, number)

    def _drop_waiting(self) -> None:
        waiting = self._optuna.trial.TrialState.WAITING
        for summary in self._optuna.get_all_study_summaries(self.storage, include_best_trial=False):
            if not summary.study_name.startswith(f"{self.setup.run}-"):
                continue
            study_id = self.storage.get_study_id_from_name(summary.study_name)
            for t in self.storage.get_all_trials(study_id, deepcopy=False, states=(waiting,)):
                self.storage.set_trial_state_values(t._trial_id, self._optuna.trial.TrialState.FAIL)

    def close(self) -> None:
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()
