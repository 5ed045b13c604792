"""The prompts: mutation (one parent) and crossover (two parents, or a merge's conflict hunks).

A prompt is a system message (program.md, the human's instructions) and a user message made of
parts (`budget.Part`), read from the store and git by `context`. Required, never trimmed: the
parent's header (its score and training summary, the run's setting: device, profile, budget,
depth; the baseline and the best; the noise floor and the acceptance rule in words), the parent's
full train.py (the SEARCH blocks must match it), a crossover's conflicts and draft, and the task.
The rest is trimmed to `max_prompt_tokens`, least important first: inspirations, then the
lineage's failures with their log tails, then the lineage, then the meta-insights, and last the
parent's children already tried with their deltas (what a researcher must not repeat).

Everything read here comes from the store and git; nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .budget import (
    APPROX,
    ENCODING_TIMEOUT,
    REQUIRED,
    Counter,
    Part,
    Prompt,
    approx_tokens,
    fit,
    token_counter,
)
from .context import (
    DIFF_LINES,
    PRIORITY_INSPIRATIONS,
    children_part,
    diff,
    failures_part,
    fenced,
    files_part,
    insights_part,
    inspirations_part,
    lineage_chain,
    lineage_part,
    pair_line,
    program_text,
    rule,
    score_line,
    setting,
    standing,
    training_summary,
)

if TYPE_CHECKING:
    from genome.merge import ConflictHunk

    from ..operators.base import Parent, ProposalContext
    from ..pairs import Match

NO_CHANGES = "NO CHANGES"
SYSTEM_INTRO = (
    "You are an ML researcher in an evolutionary search over a language model's training script. "
    "Each proposal of yours is trained for a fixed budget and scored by val_bpb (lower is "
    "better); the best become parents of later proposals. The human's research instructions "
    "(program.md) follow; they decide what is allowed and how to answer.\n\n"
)
ANSWER_MUTATION = (
    "Propose ONE change to the parent's train.py that you expect to lower val_bpb within the budget, "
    "on this setting, and that is not one of its children already tried. Answer exactly as program.md "
    "says: a `DESCRIPTION:` line, a `RATIONALE:` line, then SEARCH/REPLACE blocks whose SEARCH parts "
    "are copied exactly from the train.py above."
)


def system_message(repo) -> str:
    return SYSTEM_INTRO + program_text(repo).strip() + "\n"


def parent_lines(ctx: ProposalContext, parent: Parent) -> list[str]:
    """A parent in a few lines: its score, what made it, how its training went."""
    lines = [f"{score_line(parent.score)}. It was made by {parent.individual.operator}: "
             f"{parent.individual.description}."]  # fmt: skip
    if summary := training_summary(ctx, parent.id):
        lines.append(summary + ".")
    return lines


def setting_lines(ctx: ProposalContext, parent: Parent | None = None) -> list[str]:
    """The run's setting, where the run stands, and the rule a child is judged by."""
    scores = ctx.store.scores(ctx.depth, ctx.run)
    return [x for x in (setting(ctx, parent), standing(ctx, scores), rule(ctx)) if x]


def mutation_prompt(ctx: ProposalContext, parent: Parent, budget: int, count: Counter) -> Prompt:
    scores = ctx.store.scores(ctx.depth, ctx.run)
    chain = lineage_chain(ctx, parent.id)
    parts = [
        Part(f"The parent: {parent.id}", parent_lines(ctx, parent) + setting_lines(ctx, parent)),
        children_part(ctx, [parent.id], scores),
        insights_part(ctx),
        lineage_part(ctx, chain[1:], scores),
        failures_part(ctx, chain),
        inspirations_part(ctx, {ind.id for ind in chain}, scores),
        files_part(ctx.repo, parent.individual.commit, parent.id, "the file your SEARCH blocks must match"),
        Part("Your answer", [ANSWER_MUTATION]),
    ]
    return fit(system_message(ctx.repo), parts, budget, count)


def _hunk_text(number: int, hunk: ConflictHunk, first: str, second: str) -> str:
    def fence(text: str) -> str:
        return f"```\n{text.rstrip()}\n```" if text.strip() else "(nothing)"

    return (
        f"### Conflict {number} in {hunk.path} (line {hunk.line} of the draft)\n"
        f"{first}'s side (the draft has this now):\n{fence(hunk.ours)}\n"
        f"the common ancestor had:\n{fence(hunk.base)}\n"
        f"{second}'s side:\n{fence(hunk.theirs)}"
    )


def crossover_prompt(
    ctx: ProposalContext,
    first: Parent,
    second: Parent,
    base: str,
    draft: dict[str, str],
    hunks: Sequence[ConflictHunk],
    budget: int,
    count: Counter,
    match: Match | None = None,
    tried: str | None = None,
) -> Prompt:
    """Two parents, their lineages, what each changed since `base`, and the draft to edit
    (`tried`: the individual whose code the clean draft already is, if any)."""
    repo = ctx.repo
    scores = ctx.store.scores(ctx.depth, ctx.run)
    about = []
    for label, parent in (("A", first), ("B", second)):
        about.append(f"Parent {label}, {parent.id}: " + " ".join(parent_lines(ctx, parent)))
    if line := pair_line(first.id if match is None or match.partner.id != first.id else second.id, match):
        about.append(line)
    chains = [lineage_chain(ctx, p.id) for p in (first, second)]
    parts = [
        Part(f"The two parents: {first.id} and {second.id}", about + setting_lines(ctx, first)),
        children_part(ctx, [first.id, second.id], scores),
        insights_part(ctx),
        *(
            lineage_part(ctx, chain, scores, f"Lineage of {chain[0].id} (newest first)")
            for chain in chains
            if chain
        ),
        failures_part(ctx, [ind for chain in chains for ind in chain]),
    ]
    for label, parent in (("A", first), ("B", second)):
        commits = repo.git("log", "--format=- %s", f"{base}..{parent.individual.commit}")
        parts.append(
            Part(
                f"Parent {label}: {parent.id}, {score_line(parent.score)}",
                [
                    f"Its line since the common ancestor:\n{commits or '- (none)'}",
                    f"What it changed since the common ancestor:\n```diff\n"
                    f"{diff(repo, base, parent.individual.commit, 3 * DIFF_LINES)}\n```",
                ],
                PRIORITY_INSPIRATIONS + (1 if label == "A" else 0),
            )
        )
    if hunks:
        intro = (
            f"git merged both parents' changes; in {len(hunks)} place(s) they conflict, and there the "
            f"draft below takes {first.id}'s side. Resolve every conflict deliberately: keep one side, "
            f"or write code that keeps both ideas."
        )
        parts.append(
            Part(
                "The conflicts",
                [_hunk_text(i, h, first.id, second.id) for i, h in enumerate(hunks, 1)],
                intro=intro,
            )
        )
        task = (
            "Write SEARCH/REPLACE blocks against the draft that resolve the conflicts and make the two "
            "ideas work together"
        )
    elif tried:
        task = (
            f"git merged both parents' changes without conflict into the draft below, but that merge was "
            f"already tried as {tried}. Write SEARCH/REPLACE blocks against the draft that make the two ideas "
            "work better together (e.g. retune what they share)"
        )
    else:
        task = (
            "git merged both parents' changes without conflict into the draft below. Write SEARCH/"
            "REPLACE blocks against the draft that make the two ideas work well together (e.g. retune "
            f"what they share); if the draft is already the best combination, write a line `{NO_CHANGES}` "
            "instead of blocks"
        )
    parts.append(Part("The draft child (your SEARCH blocks must match it)", fenced(list(draft.items()))))
    parts.append(
        Part(
            "Your answer",
            [
                f"Combine the ideas of {first.id} and {second.id} into one child. {task}. Answer as "
                "program.md says: a `DESCRIPTION:` line, a `RATIONALE:` line, then the blocks."
            ],
        )
    )
    return fit(system_message(repo), parts, budget, count)


__all__ = [
    "APPROX", "ENCODING_TIMEOUT", "NO_CHANGES", "REQUIRED", "Counter", "Part", "Prompt", "approx_tokens",
    "crossover_prompt", "fit", "mutation_prompt", "system_message", "token_counter",
]  # fmt: skip
