"""The LLM operators: `llm_mutation` (one parent) and `llm_crossover` (two parents, a merge commit).

Both share one `LLMSession` per run: the client (retries, calls in flight, the USD cap), the model
bandit and the meta-insights writer, so the cap and the limit hold over every LLM call of the run.

The crossover takes the partner that complements its first parent best (`evolve.pairs`: never an
ancestor or descendant; different knobs and code regions, both better than their common ancestor,
first), then lets git do what it can: a three-way merge of both parents' changes since
their common ancestor. The merged text is the draft child; where git found conflicts the draft
takes the better parent's side and the prompt lists every conflict hunk (both sides and the
ancestor's text). The LLM answers with SEARCH/REPLACE blocks against the draft (or, for a clean
merge it finds already right, `NO CHANGES`), and the result is committed as a merge commit whose
parents are both parents; its description ends with what it took from each parent.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from genome.edits import Edit, apply_edit
from genome.errors import EditError, GenomeError
from genome.merge import ConflictHunk, commit_merge, parse_conflicts, three_way
from genome.record import Genome

from ..novelty import tried_as
from ..operators.base import (
    Operator,
    OperatorError,
    OperatorSetup,
    Outcome,
    Parent,
    Proposal,
    ProposalContext,
    register,
)
from ..pairs import candidates, files_at, rank_partners, took
from ..store import LineageKind
from .client import BudgetExhausted, Completion, LLMClient, ModelBandit
from .config import LLMConfig, load_config
from .insights import Insights
from .prompts import crossover_prompt, mutation_prompt, token_counter
from .responses import Answer, converse, describe

log = logging.getLogger("evolve.llm")
BANDIT_FILE = "llm_models.json"


class LLMSession:
    """What the LLM operators of one run share; made by the first of them, closed by the last."""

    def __init__(self, setup: OperatorSetup) -> None:
        self.config: LLMConfig = load_config(setup.settings.llm)
        self.count = token_counter(self.config.tokenizer)
        spent = float(setup.store.llm_spend(setup.run)["cost"])  # the cap counts a resumed run's past
        self.client = LLMClient(self.config, spent=spent, count_tokens=self.count)
        self.bandit = ModelBandit(self.config.models, self.config.weights, setup.state_dir / BANDIT_FILE)
        self.insights = Insights(setup.store, setup.run, setup.depth, self.config.insights_every)
        self.users = 0

    @property
    def main_model(self) -> str:
        """The model with the largest weight: it writes the meta-insights."""
        return max(zip(self.config.weights, self.config.models, strict=True))[1]

    def update_insights(self, ctx: ProposalContext) -> None:
        self.insights.maybe_update(
            self.client, self.main_model, ctx, self.count, self.config.max_prompt_tokens
        )


_SESSIONS: dict[tuple[str, str], LLMSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _acquire(setup: OperatorSetup) -> tuple[tuple[str, str], LLMSession]:
    key = (str(setup.state_dir.resolve()), setup.run)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = LLMSession(setup)
        session.users += 1
        return key, session


def _release(key: tuple[str, str]) -> None:
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            return
        session.users -= 1
        if session.users <= 0:
            del _SESSIONS[key]
            session.client.close()


def _best(parents: tuple[Parent, ...]) -> float | None:
    return min((p.score.mean for p in parents if p.score is not None), default=None)


class _LLMOperator(Operator):
    """The shared part: the session, the budget check, the bandit's bookkeeping."""

    def __init__(self, setup: OperatorSetup) -> None:
        self._key, self.session = _acquire(setup)
        self._closed = False

    @property
    def exhausted(self) -> bool:
        """True once the run's LLM spend reached the cap: the engine may stop picking this operator."""
        return self.session.client.exhausted

    def _start(self, ctx: ProposalContext) -> str:
        """Check the budget, refresh the meta-insights when due, and pick this proposal's model."""
        if len(ctx.parents) != self.arity:
            raise OperatorError(f"{self.name} needs {self.arity} parent(s), got {len(ctx.parents)}")
        self.session.client.check_budget()
        self.session.update_insights(ctx)
        return self.session.bandit.choose(ctx.rng)

    def _notes(self, answer: Answer[Any], model: str, prompt_tokens: int, trimmed: tuple[str, ...]):
        last = answer.completions[-1]
        _, rationale = describe(last, answer.edit)
        return {
            "model": model,
            "repaired": answer.repaired,
            "prompt_tokens": prompt_tokens,
            "trimmed": list(trimmed),
            "cost": sum(c.cost for c in answer.completions),
            "rationale": rationale,
        }

    def on_outcome(self, outcome: Outcome) -> None:
        # Only an accepted child counts: a rejected duplicate carries its twin's score.
        score = outcome.score.mean if outcome.score is not None and outcome.accepted else None
        improved = self.session.bandit.outcome(outcome.child.id, score)
        if improved is not None:
            log.debug("%s: child %s improved=%s", self.name, outcome.child.id, improved)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self._key)


@register("llm_mutation")
class LLMMutation(_LLMOperator):
    """The parent's train.py, its lineage, inspirations and failures -> one SEARCH/REPLACE edit."""

    name = "llm_mutation"
    arity = 1

    def propose(self, ctx: ProposalContext) -> Proposal:
        model = self._start(ctx)
        session = self.session
        parent = ctx.parents[0]
        prompt = mutation_prompt(ctx, parent, session.config.max_prompt_tokens, session.count)

        def apply(edit: Edit | None, completion: Completion) -> Genome:
            assert edit is not None  # NO CHANGES is not allowed here
            texts = files_at(ctx.repo, parent.individual.commit)
            changed = {p: apply_edit(texts[p], edit, p) for p in edit.paths if p in texts}
            refuse_twin(ctx, {**texts, **changed})
            return ctx.repo.apply_edit(parent.genome, edit, operator=self.name)

        answer = converse(session.client, prompt.messages, model, ctx.report_llm, apply, purpose="mutation",
                          settle=ctx.settle_llm)  # fmt: skip
        child = answer.result
        session.bandit.proposed(child.id, model, _best(ctx.parents))
        notes = self._notes(answer, model, prompt.tokens, prompt.trimmed)
        return Proposal(child, LineageKind.MUTATION, notes)


def take_first_side(merged: str) -> str:
    """A diff3 merge result with every conflict resolved to its first side (`<<<<<<<` .. `|||||||`)."""
    out = []
    part = None
    for line in merged.splitlines(keepends=True):
        if part is None and line.startswith("<<<<<<< "):
            part = "ours"
        elif part == "ours" and line.startswith("||||||| "):
            part = "base"
        elif part in ("ours", "base") and line.rstrip("\r\n") == "=======":
            part = "theirs"
        elif part == "theirs" and line.startswith(">>>>>>> "):
            part = None
        elif part in (None, "ours"):
            out.append(line)
    return "".join(out)


@register("llm_crossover")
class LLMCrossover(_LLMOperator):
    """Two parents -> git's merge of their changes -> the LLM combines them -> a merge commit."""

    name = "llm_crossover"
    arity = 2

    def propose(self, ctx: ProposalContext) -> Proposal:
        model = self._start(ctx)
        session = self.session
        repo = ctx.repo
        matches = rank_partners(ctx, ctx.parents[0], candidates(ctx))
        if not matches:
            raise OperatorError(
                f"no candidate partner of {ctx.parents[0].id} can be crossed with it (each is its ancestor or "
                f"descendant, or one side changed nothing since their common ancestor)"
            )
        match = matches[0]
        first, second = sorted((ctx.parents[0], match.partner), key=_rank)
        base = match.base
        texts = {
            name: {p: (repo.read_exact(c, p) or b"").decode() for p in repo.mutable}
            for name, c in (("first", first.individual.commit), ("base", base), ("second", second.individual.commit))
        }  # fmt: skip
        draft: dict[str, str] = {}
        hunks: list[ConflictHunk] = []
        for path in repo.mutable:
            merged, conflicts = three_way(
                texts["first"][path],
                texts["base"][path],
                texts["second"][path],
                (first.id, "base", second.id),
            )
            if conflicts:
                hunks.extend(parse_conflicts(merged, path))
                merged = take_first_side(merged)
            draft[path] = merged
        same_as = _same_as(draft, texts, first.id, second.id)
        merged_before = tried_as(ctx.store, ctx.run, draft) if not hunks else None
        prompt = crossover_prompt(
            ctx, first, second, base, draft, hunks, session.config.max_prompt_tokens, session.count, match,
            tried=merged_before.id if merged_before else None,
        )  # fmt: skip

        def apply(edit: Edit | None, completion: Completion) -> Genome:
            if edit is None:
                files = dict(draft)
            else:
                outside = [p for p in edit.paths if p not in draft]
                if outside:
                    raise EditError(
                        f"the edit changes {', '.join(outside)}; only {', '.join(draft)} may change"
                    )
                files = {p: apply_edit(text, edit, p) for p, text in draft.items()}
                if files == draft:
                    raise EditError("the edit changes nothing in the draft; propose an actual change")
            equal = _same_as(files, texts, first.id, second.id)
            if equal:
                raise EditError(
                    f"the result is identical to parent {equal}: it would be a duplicate; the child must "
                    f"combine both parents' ideas"
                )
            refuse_twin(ctx, files)
            description, rationale = describe(completion, edit)
            sides = [(first.id, texts["first"]), (second.id, texts["second"])]
            description = f"{description or f'combine {first.id} and {second.id}'} ({took(texts['base'], sides, files)})"
            try:
                return commit_merge(
                    repo, first.genome, second.genome, files, description, self.name, rationale=rationale
                )
            except GenomeError as exc:  # e.g. conflict markers left in: the LLM can fix that
                raise EditError(str(exc)) from None

        answer = converse(
            session.client,
            prompt.messages,
            model,
            ctx.report_llm,
            apply,
            purpose="crossover",
            settle=ctx.settle_llm,
            allow_no_changes=not hunks and same_as is None and merged_before is None,
        )
        child = answer.result
        session.bandit.proposed(child.id, model, _best((first, second)))
        notes = self._notes(answer, model, prompt.tokens, prompt.trimmed)
        notes.update(base=base, conflicts=len(hunks), kept_merge=answer.edit is None, partner=match.summary(),
                     tier=match.tier)  # fmt: skip
        return Proposal(child, LineageKind.CROSSOVER, notes)


def refuse_twin(ctx: ProposalContext, files: dict[str, str]) -> None:
    """EditError (for the repair round) when `files` are exactly the code of an individual already tried."""
    twin = tried_as(ctx.store, ctx.run, files)
    if twin is not None:
        raise EditError(
            f"the result is the same code as {twin.id} ({twin.description}), which was already tried; "
            f"propose a different change"
        )


def _rank(parent: Parent) -> tuple[float, str]:
    return (parent.score.mean if parent.score is not None else float("inf"), parent.id)


def _same_as(files: dict[str, str], texts: dict[str, dict[str, str]], first: str, second: str) -> str | None:
    if files == texts["first"]:
        return first
    if files == texts["second"]:
        return second
    return None


__all__ = ["BudgetExhausted", "LLMClient", "LLMCrossover", "LLMMutation", "LLMSession", "ModelBandit"]
