"""Merge crossover: git's three-way merge of two parents' changes since their common ancestor.

No LLM: the child is a merge commit with both parents when their changes touch different lines.
Merging a parent with its own ancestor gives back the descendant (nothing new), so partners are
never ancestor and descendant: `evolve.pairs.rank_partners` orders the drawn second parent, the
engine's other partners and the elites by how well their changes complement the first parent's
(different knobs and code regions, both better than their common ancestor), and the operator
tries them in that order. The child's description says what it took from each parent. git calls
changes to neighbouring lines a conflict; conflict blocks whose sides have as many
lines are settled line by line (each line from the side that changed it). Where both parents
retuned the same hyperparameter (a module-level `UPPER_CASE = ...` line), the better parent's
value is kept, as a crossover keeps a gene of the fitter parent. Any other conflict (code changed
on both sides) is a failed proposal here; the LLM crossover resolves those instead.
"""

from __future__ import annotations

import re

from genome.errors import GenomeError
from genome.merge import MERGE_OPERATOR, MergeStatus, commit_merge, plan_merge

from ..novelty import tried_as
from ..pairs import Match, candidates, files_at, rank_partners, took
from ..store import LineageKind
from .base import Operator, OperatorError, OperatorSetup, Parent, Proposal, ProposalContext, register

MAX_PARTNERS = 4  # partners tried for one proposal (each try is a cheap `git merge-file`)


@register(MERGE_OPERATOR)
class MergeCrossover(Operator):
    name = MERGE_OPERATOR
    arity = 2

    def __init__(self, setup: OperatorSetup) -> None:
        self.setup = setup

    def propose(self, ctx: ProposalContext) -> Proposal:
        if len(ctx.parents) != 2:
            raise OperatorError(f"a merge needs two parents, got {len(ctx.parents)}")
        first = ctx.parents[0]
        matches = rank_partners(ctx, first, candidates(ctx))
        tried: list[str] = []
        for match in matches[:MAX_PARTNERS]:
            tried.append(match.partner.id)
            # The better parent first: its side of the merge is the child's first parent.
            a, b = sorted((first, match.partner), key=_rank)
            try:
                result = plan_merge(ctx.repo, a.genome, b.genome)
            except GenomeError as exc:
                raise OperatorError(f"merge of {a.id} and {b.id} failed: {exc}") from None
            if result.status is MergeStatus.IDENTICAL:
                continue
            files = dict(result.merged or {})
            if result.status is MergeStatus.CONFLICT:
                resolved = {path: resolve_linewise(text) for path, text in files.items()}
                if not all(text is not None for text in resolved.values()):
                    raise OperatorError(
                        f"merge of {a.id} and {b.id} conflicts in {len(result.hunks)} hunk(s); "
                        "the LLM crossover can resolve it"
                    )
                # Neighbouring lines changed on each side (two knobs of one block): no real conflict.
                files = {p: t for p, t in resolved.items() if t is not None}
                if any(files == {p: _text(ctx, g.commit, p) for p in files} for g in (a.genome, b.genome)):
                    continue  # b only retuned a's knobs: the merge is a itself
            if tried_as(ctx.store, ctx.run, files) is not None:
                continue  # this merge was made before: a duplicate
            description = _describe(ctx, a, b, match, files)
            try:
                child = commit_merge(ctx.repo, a.genome, b.genome, files, description, operator=self.name,
                                     rationale=f"Three-way merge of {a.id} and {b.id} from their common "
                                               f"ancestor {match.base_id or match.base[:10]}.")  # fmt: skip
            except GenomeError as exc:
                raise OperatorError(f"could not commit the merge of {a.id} and {b.id}: {exc}") from None
            notes = {"base": result.base, "partner": match.summary(), "tier": match.tier}
            if result.status is MergeStatus.CONFLICT:
                notes["linewise"] = True
            return Proposal(child, kind=LineageKind.MERGE, notes=notes)
        if not tried:
            raise OperatorError(
                f"every candidate partner of {first.id} is its ancestor or descendant, or adds nothing"
            )
        raise OperatorError(f"merging {first.id} with {', '.join(tried)} gives nothing new")


def _text(ctx: ProposalContext, commit: str, path: str) -> str:
    data = ctx.repo.read_exact(commit, path)
    return data.decode() if data is not None else ""


def _rank(parent: Parent) -> tuple[float, str]:
    return (parent.score.mean if parent.score is not None else float("inf"), parent.id)


def _describe(ctx: ProposalContext, a: Parent, b: Parent, match: Match, files: dict[str, str]) -> str:
    """`merge gA + gB: from gA: X=1; from gB: code (1 hunk)`: what the child took from each."""
    cache: dict[str, dict[str, str]] = {}
    sides = [(p.id, files_at(ctx.repo, p.individual.commit, cache)) for p in (a, b)]
    child = {**files_at(ctx.repo, a.individual.commit, cache), **files}
    return f"merge {a.id} + {b.id}: {took(files_at(ctx.repo, match.base, cache), sides, child)}"


_CONSTANT = re.compile(r"([A-Z][A-Z0-9_]*)\s*=(?!=)")  # a module-level hyperparameter line


def _constant(line: str) -> str | None:
    m = _CONSTANT.match(line)
    return m.group(1) if m else None


def resolve_linewise(merged: str) -> str | None:
    """Resolve diff3 conflict blocks whose three sides have the same number of lines, line by line.

    Each line takes the side that changed it; a hyperparameter line that both changed keeps the
    first side's value (the better parent's). None when another line was changed differently on
    both sides, or the sides differ in length (a real conflict, left to the LLM crossover)."""
    out: list[str] = []
    part: str | None = None
    sides: dict[str, list[str]] = {}
    for line in merged.splitlines(keepends=True):
        if part is None and line.startswith("<<<<<<< "):
            part, sides = "ours", {"ours": [], "base": [], "theirs": []}
        elif part == "ours" and line.startswith("||||||| "):
            part = "base"
        elif part in ("ours", "base") and line.rstrip("\r\n") == "=======":
            part = "theirs"
        elif part == "theirs" and line.startswith(">>>>>>> "):
            ours, base, theirs = sides["ours"], sides["base"], sides["theirs"]
            if not len(ours) == len(base) == len(theirs):
                return None
            for o, b, t in zip(ours, base, theirs, strict=True):
                if o == b or o == t:
                    out.append(t)
                elif t == b or ((name := _constant(o)) is not None and name == _constant(b) == _constant(t)):
                    out.append(o)
                else:
                    return None
            part = None
        elif part is None:
            out.append(line)
        else:
            sides[part].append(line)
    return None if part is not None else "".join(out)
