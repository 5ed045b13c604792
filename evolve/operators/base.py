"""The operator interface: how a child is proposed from one or two parents.

An operator reads parents (store rows with their scores), writes one child commit with the
workspace's `GenomeRepo`, and returns it in a `Proposal`. The engine picks operators by name
from `REGISTRY` with adaptive weights, so a new operator (the LLM mutation, the LLM crossover)
plugs in by registering a factory; the engine never changes for it.

Writing one:

    @register("my_op")
    class MyOperator(Operator):
        name = "my_op"
        arity = 1                       # parents it needs: 1 (mutation) or 2 (crossover)

        def __init__(self, setup: OperatorSetup) -> None:  # once per `evolve run`
            self.client = ...            # e.g. from setup.settings.llm and setup.options

        def propose(self, ctx: ProposalContext) -> Proposal:
            parent = ctx.parents[0]
            text = ctx.repo.read(parent.genome)
            ctx.report_llm(model="m", ok=True, prompt_tokens=10, completion_tokens=5)
            child = ctx.repo.apply_edit(parent.genome, edit, operator=self.name)
            return Proposal(child)       # or: raise OperatorError("one line: why")

`propose` runs on a proposal worker thread, several at once (one operator object serves them all,
so keep shared state behind a lock), while devices train other children. It must return a
committed child or raise `OperatorError` (the engine records a failed proposal and moves on);
any other exception is treated the same way but logged with its type, as a bug.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from genome.record import BASELINE_ID

from ..errors import EvolveError
from ..promotion import Score
from ..store import Individual, LineageKind

if TYPE_CHECKING:
    from genome.record import Genome
    from genome.repo import GenomeRepo
    from genome.settings import Settings

    from ..store import Store


class OperatorError(EvolveError):
    """A proposal that could not be made (merge conflict, unusable LLM answer, nothing to tweak).

    Not fatal: the engine records it as a failed proposal of the operator, which lowers the
    operator's weight, and asks again."""


@dataclass(frozen=True)
class Parent:
    """A parent as an operator sees it: the store's row, its git record, and its score so far."""

    individual: Individual
    score: Score | None  # mean val_bpb over its ok evaluations at the search depth (lower is better)

    @property
    def id(self) -> str:
        return self.individual.id

    @property
    def genome(self) -> Genome:
        """The git record (built from the row: no git call)."""
        from genome.record import Genome

        ind = self.individual
        return Genome(
            run=ind.run,
            id=ind.id,
            commit=ind.commit,
            parents=ind.parents,
            operator=ind.operator,
            description=ind.description,
            branch=ind.branch,
        )


# report_llm(model=..., ok=..., purpose="mutation", prompt_tokens=0, completion_tokens=0, cost=0.0,
# latency=0.0, error="", outcome="", why="", prompt=None, answer=None) records one LLM call in the
# store's llm_calls table, with the run and operator filled in, and returns its row id; calls of
# purpose "insights" are the run's, not the child's. settle_llm(call, outcome, why) records what
# became of a call's answer afterwards: "usable", "repaired" or "unusable".
ReportLLM = Callable[..., "int | None"]
SettleLLM = Callable[[int, str, str], None]


@dataclass(frozen=True)
class OperatorSetup:
    """What an operator's factory gets, once per `evolve run`."""

    root: Path  # the workspace (a git repository)
    state_dir: Path  # `.evolve/`: where an operator keeps files (e.g. optuna.db)
    run: str
    settings: Settings  # evolve.toml's [run] (and `.llm`, the [llm] table)
    store: Store
    depth: int  # the search depth: scores at other depths are not comparable
    options: Mapping[str, Any] = field(default_factory=dict)  # evolve.toml's [operators.<name>]


@dataclass(frozen=True)
class ProposalContext:
    """Everything one proposal may use. Read the store; never write it (the engine does)."""

    repo: GenomeRepo
    store: Store
    run: str
    settings: Settings
    parents: tuple[Parent, ...]  # `arity` of them; for two, the first is the better one, and the
    # two are never ancestor and descendant of each other
    island: int  # the island the child will live in
    depth: int
    rng: random.Random  # seeded per proposal: a run replays the same choices
    noise_floor: float | None  # the noise model's seed-to-seed std of val_bpb (None until measured)
    elites: tuple[Parent, ...] = ()  # the best members (of the island, then overall), best first
    report_llm: ReportLLM = lambda **_: None
    settle_llm: SettleLLM = lambda *_: None
    partners: tuple[Parent, ...] = ()  # for two parents: other members unrelated to the first, best
    # first, that a crossover may take instead of the second (see evolve.pairs)
    acceptance: str = ""  # the promotion rule in words (evolve.promotion.describe_rule), for prompts
    baseline: str = BASELINE_ID  # the run's generation 0 (ids run on across the runs of a workspace)


@dataclass(frozen=True)
class Proposal:
    """A committed child and how it relates to its parents.

    `kind` is `mutation` (one parent), `crossover` (an LLM-combined child) or `merge` (a plain git
    merge). `notes` is free-form data stored with the proposal event (e.g. an Optuna trial number)."""

    genome: Genome
    kind: LineageKind = LineageKind.MUTATION
    notes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What became of a proposed child, told to its operator once the engine has decided."""

    child: Individual
    parents: tuple[str, ...]
    score: Score | None  # None: it never produced an ok evaluation (failed, rejected, duplicate)
    accepted: bool
    improvement: float | None = None  # mean of child - parent over their ok paired seeds (< 0: better)
    failed: bool = False  # trained, and a run failed (crash, diverged, timeout, OOM, invalid)


class Operator(ABC):
    """Proposes a child from `arity` parents. One object per run, shared by proposal threads."""

    name: ClassVar[str]
    arity: ClassVar[int] = 1

    @abstractmethod
    def propose(self, ctx: ProposalContext) -> Proposal:
        """Commit one child of `ctx.parents` (operator trailer = `self.name`) or raise OperatorError."""

    @property
    def exhausted(self) -> bool:
        """True when the operator can make no more proposals this run (e.g. its LLM budget is
        spent): the engine stops drawing it. Default: never."""
        return False

    def on_outcome(self, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """Told what became of a child this operator proposed (Optuna's `tell`). Default: nothing.

        Called from the engine's thread after the child's promotion decision, and again on
        resume for children whose decision was recorded while the hook may not have run."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the operator holds (clients, storages) at the end of a run."""


OperatorFactory = Callable[[OperatorSetup], Operator]
REGISTRY: dict[str, OperatorFactory] = {}


def register(name: str) -> Callable[[OperatorFactory], OperatorFactory]:
    """Class decorator (or function decorator for a factory) that makes `name` selectable."""

    def deco(factory: OperatorFactory) -> OperatorFactory:
        REGISTRY[name] = factory
        return factory

    return deco


def load_operators() -> None:
    """Import every module of this package, so each one's `@register` has run.

    A new operator is a module dropped into `evolve/operators/`: nothing else to list."""
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def available() -> list[str]:
    """Every registered operator name."""
    load_operators()
    return sorted(REGISTRY)


def make_operator(name: str, setup: OperatorSetup) -> Operator:
    """The operator registered as `name`, built for this run."""
    names = available()
    factory = REGISTRY.get(name)
    if factory is None:
        raise EvolveError(f"unknown operator {name!r}; known: {', '.join(names)}")
    return factory(setup)
