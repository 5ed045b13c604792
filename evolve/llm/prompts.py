"""The prompts: mutation (one parent) and crossover (two parents, or a merge's conflict hunks).

A prompt is a system message (program.md, the human's instructions) and a user message made of
parts. Some parts are required (the parent's full train.py, which the SEARCH blocks must match;
the conflicts to resolve; the task); the others are context ranked by importance, each a list of
items, most useful first. `fit` keeps the prompt within `max_prompt_tokens` as counted by tiktoken:
it drops items from the end of the least important part first (inspirations, then failures, then
lineage, then insights), so the prompt shrinks the way a researcher would skim.

Everything read here comes from the store and git; nothing is written.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genome.edits import DEFAULT_PATH

from ..store import Individual, Status

if TYPE_CHECKING:
    from genome.merge import ConflictHunk
    from genome.repo import GenomeRepo

    from ..operators.base import Parent, ProposalContext
    from ..promotion import Score

log = logging.getLogger("evolve.llm")

Counter = Callable[[str], int]
REQUIRED = 100  # parts at this priority are never trimmed
PRIORITY_INSIGHTS = 50
PRIORITY_LINEAGE = 40
PRIORITY_FAILURES = 30
PRIORITY_INSPIRATIONS = 20
DIFF_LINES = 80  # lines of one inspiration's diff
LOG_LINES = 25  # lines of one failure's log tail
LINEAGE_DEPTH = 12
MAX_FAILURES = 5
ELITES = 3
DIVERSE = 2
NO_CHANGES = "NO CHANGES"
APPROX = "approx"
ENCODING_TIMEOUT = 15.0  # seconds to load (maybe download) a tiktoken encoding before counting approximately

SYSTEM_INTRO = (
    "You are an ML researcher in an evolutionary search over a language model's training script. "
    "Each proposal of yours is trained for a fixed time budget and scored by val_bpb (lower is "
    "better); the best become parents of later proposals. The human's research instructions "
    "(program.md) follow; they decide what is allowed and how to answer.\n\n"
)


# ---------------------------------------------------------------------------------------------
# Counting tokens
# ---------------------------------------------------------------------------------------------
_ENCODINGS: dict[str, Counter] = {}
_ENCODINGS_LOCK = threading.Lock()


def approx_tokens(text: str) -> int:
    """About three bytes per token: code and English under modern BPEs average 3.5-4, so it errs long."""
    return math.ceil(len(text.encode()) / 3)


def _load_encoding(name: str, timeout: float):
    """tiktoken's encoding `name`, or an exception; tiktoken downloads a file it has not cached,
    with no timeout of its own, so a firewalled host could wait forever: give up after `timeout`."""
    found: dict[str, object] = {}

    def load() -> None:
        try:
            import tiktoken

            found["encoding"] = tiktoken.get_encoding(name)
        except Exception as exc:
            found["error"] = exc

    thread = threading.Thread(target=load, name=f"tiktoken-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"not loaded in {timeout:g} s (offline, and not in tiktoken's cache?)")
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    return found["encoding"]


def token_counter(name: str) -> Counter:
    """A tiktoken encoding's counter (cached); `approx`, or an encoding that can't load (offline,
    not cached): bytes / 3, with one warning per process. Never raises."""
    with _ENCODINGS_LOCK:
        if name not in _ENCODINGS:
            counter: Counter = approx_tokens
            if name != APPROX:
                try:
                    encoding = _load_encoding(name, ENCODING_TIMEOUT)
                    counter = lambda text: len(encoding.encode(text, disallowed_special=()))
                except Exception as exc:
                    log.warning(
                        "tiktoken encoding %r unavailable (%s: %s); counting prompt tokens as bytes/3 "
                        "instead (set [llm] tokenizer = \"approx\" to say so, or fill TIKTOKEN_CACHE_DIR)",
                        name, type(exc).__name__, str(exc)[:200],
                    )  # fmt: skip
            _ENCODINGS[name] = counter
        return _ENCODINGS[name]


# ---------------------------------------------------------------------------------------------
# Parts and the budget
# ---------------------------------------------------------------------------------------------
@dataclass
class Part:
    """A section of the user message: a heading, an optional intro, and items (most useful first)."""

    title: str
    items: list[str]
    priority: int = REQUIRED
    intro: str = ""

    def render(self) -> str:
        if not self.items and self.priority < REQUIRED:
            return ""
        body = "\n\n".join(self.items)
        head = f"## {self.title}\n" if self.title else ""
        return head + (f"{self.intro}\n\n" if self.intro else "") + body


@dataclass(frozen=True)
class Prompt:
    messages: tuple[dict[str, str], ...]
    tokens: int
    trimmed: tuple[str, ...] = ()  # "title: n items dropped" for each part that lost items


def fit(system: str, parts: Sequence[Part], budget: int, count: Counter) -> Prompt:
    """Render the parts, dropping the least important items until the prompt fits `budget` tokens."""
    parts = [Part(p.title, list(p.items), p.priority, p.intro) for p in parts]
    sizes = [count(p.render()) for p in parts]
    fixed = count(system) + 16  # message framing
    dropped = [0] * len(parts)
    while fixed + sum(sizes) > budget:
        candidates = [i for i, p in enumerate(parts) if p.priority < REQUIRED and p.items]
        if not candidates:
            log.warning("prompt needs %d tokens, over the budget of %d", fixed + sum(sizes), budget)
            break
        i = min(candidates, key=lambda j: parts[j].priority)
        parts[i].items.pop()
        dropped[i] += 1
        sizes[i] = count(parts[i].render())
    user = "\n\n".join(text for p in parts if (text := p.render()))
    trimmed = tuple(f"{p.title}: {n} dropped" for p, n in zip(parts, dropped, strict=True) if n)
    messages = ({"role": "system", "content": system}, {"role": "user", "content": user})
    return Prompt(messages, fixed + sum(sizes), trimmed)


# ---------------------------------------------------------------------------------------------
# Reading the run
# ---------------------------------------------------------------------------------------------
def program_text(repo: GenomeRepo) -> str:
    """program.md as the user has it now (edits apply to the next prompt), else the packaged one."""
    path = Path(repo.root) / "program.md"
    if path.is_file():
        return path.read_text()
    from genome.workspace import default_program

    return default_program()


def system_message(repo: GenomeRepo) -> str:
    return SYSTEM_INTRO + program_text(repo).strip() + "\n"


def clip(text: str, lines: int, *, tail: bool = False) -> str:
    """At most `lines` lines of `text` (its end when `tail`), saying how many were cut."""
    rows = text.rstrip("\n").splitlines()
    if len(rows) <= lines:
        return "\n".join(rows)
    cut = len(rows) - lines
    if tail:
        return f"[... {cut} earlier lines]\n" + "\n".join(rows[-lines:])
    return "\n".join(rows[:lines]) + f"\n[... {cut} more lines]"


def diff(repo: GenomeRepo, old: str, new: str, lines: int = DIFF_LINES) -> str:
    """The unified diff of the mutable files between two commits, clipped."""
    text = repo.git("diff", "--unified=2", "--no-color", old, new, "--", *repo.mutable)
    return clip(text, lines) if text.strip() else "(no change to the code)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _score_line(score: Score | None) -> str:
    if score is None:
        return "not scored yet"
    return f"val_bpb {score.mean:.6f} ± {score.std:.4f} over {score.n} seed(s)"


def files_part(repo: GenomeRepo, commit: str, owner: str, title_hint: str) -> Part:
    """The mutable files at `commit`, in full: SEARCH blocks must match them exactly."""
    files = [(p, data.decode()) for p in repo.mutable if (data := repo.read_exact(commit, p)) is not None]
    return Part(f"{DEFAULT_PATH} of {owner} ({title_hint})" if len(files) <= 1 else f"The files of {owner}",
                _fenced(files))  # fmt: skip


def _fenced(files: Sequence[tuple[str, str]]) -> list[str]:
    """Each file in a code fence; with several files, its name on the line above (the parser reads it)."""
    out = []
    for path, text in files:
        language = "python" if path.endswith(".py") else ""
        name = f"{path}\n" if len(files) > 1 else ""
        out.append(f"{name}```{language}\n{text.rstrip()}\n```")
    return out


def lineage_chain(ctx: ProposalContext, start: str) -> list[Individual]:
    """`start` and its first-parent ancestors, newest first (at most LINEAGE_DEPTH)."""
    chain = []
    current = ctx.store.get(start)
    while current is not None and len(chain) < LINEAGE_DEPTH:
        chain.append(current)
        current = ctx.store.get(current.parents[0]) if current.parents else None
    return chain


def lineage_part(ctx: ProposalContext, chain: list[Individual], scores: dict[str, Score]) -> Part:
    items = []
    for k, ind in enumerate(chain):
        older = chain[k + 1] if k + 1 < len(chain) else None
        score = scores.get(ind.id)
        line = f"- {ind.id} [{ind.operator}] {ind.description}: {_fmt(score.mean if score else None)}"
        if score and older is not None and older.id in scores:
            line += f" ({score.mean - scores[older.id].mean:+.6f} vs {older.id})"
        items.append(line)
    return Part("Its lineage (newest first)", items, PRIORITY_LINEAGE)


def failures_part(ctx: ProposalContext, chain: list[Individual]) -> Part:
    """Children of this lineage that failed or were rejected, newest first, with their log tails."""
    members = {ind.id for ind in chain}
    failed = [
        ind
        for ind in ctx.store.individuals(ctx.run, status=(Status.FAILED, Status.REJECTED))
        if members.intersection(ind.parents)
    ]
    items = []
    for ind in reversed(failed[-MAX_FAILURES:]):
        evals = ctx.store.evaluations(ind.id)
        last = evals[-1] if evals else None
        status = ind.guard_reason and "rejected" or (last.status if last else ind.status.value)
        reason = ind.guard_reason or (last.reason if last else "") or ""
        tail = (last.error_tail if last else "") or _log_tail(last.log_path if last else None)
        text = f"### {ind.id} ({status}), child of {', '.join(ind.parents)}: {ind.description}"
        if reason:
            text += f"\nreason: {' '.join(reason.split())[:300]}"
        if tail.strip():
            text += f"\n```\n{clip(tail, LOG_LINES, tail=True)}\n```"
        items.append(text)
    return Part(
        "Recent failures in this lineage",
        items,
        PRIORITY_FAILURES,
        intro="These changes were tried on this line and did not produce a score; do not repeat them.",
    )


def _log_tail(path: str | None) -> str:
    if not path:
        return ""
    try:
        # The engine gzips finished logs.
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            return f.read()[-8192:].decode(errors="replace")
    except (OSError, EOFError):
        return ""


def inspirations_part(ctx: ProposalContext, exclude: set[str], scores: dict[str, Score]) -> Part:
    """A few elites and a few diverse evaluated individuals: their descriptions and diffs."""
    picks: list[tuple[str, Individual]] = []
    for elite in ctx.elites:
        if elite.id not in exclude and len(picks) < ELITES and elite.individual.parents:
            picks.append(("elite", elite.individual))
    taken = exclude | {ind.id for _, ind in picks}
    others = [
        ind
        for ind in ctx.store.individuals(ctx.run, status=Status.EVALUATED)
        if ind.id not in taken and ind.parents and ind.id in scores
    ]
    # Diverse: prefer other islands, then anything not already shown.
    far = [ind for ind in others if ind.island != ctx.island] or others
    for ind in ctx.rng.sample(far, min(DIVERSE, len(far))):
        picks.append(("diverse", ind))
    items = []
    for label, ind in picks:
        score = scores.get(ind.id)
        parent = scores.get(ind.parents[0])
        delta = f", {score.mean - parent.mean:+.6f} vs its parent" if score and parent else ""
        items.append(
            f"### {ind.id} ({label}, {_fmt(score.mean if score else None)}{delta}): {ind.description}\n"
            f"```diff\n{diff(ctx.repo, ind.commit + '^1', ind.commit)}\n```"
        )
    return Part(
        "Inspirations",
        items,
        PRIORITY_INSPIRATIONS,
        intro="Other individuals of this run and what they changed relative to their own parent.",
    )


def insights_part(ctx: ProposalContext) -> Part:
    latest = ctx.store.insights(ctx.run, limit=1)
    return Part(
        "What the search has learned so far",
        [latest[-1].strip()] if latest else [],
        PRIORITY_INSIGHTS,
    )


def _context_line(ctx: ProposalContext, scores: dict[str, Score]) -> str:
    best = min(scores.items(), key=lambda kv: kv[1].mean) if scores else None
    base = scores.get("g0000")
    parts = []
    if base:
        parts.append(f"baseline g0000: {base.mean:.6f}")
    if best:
        parts.append(f"best so far {best[0]}: {best[1].mean:.6f}")
    if ctx.noise_floor:
        parts.append(
            f"seed-to-seed noise ±{ctx.noise_floor:.4f}: a change must beat its parent by more to count"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# The two prompts
# ---------------------------------------------------------------------------------------------
ANSWER_MUTATION = (
    "Propose ONE change to the parent's train.py that you expect to lower val_bpb within the budget. "
    "Answer exactly as program.md says: a `DESCRIPTION:` line, a `RATIONALE:` line, then "
    "SEARCH/REPLACE blocks whose SEARCH parts are copied exactly from the train.py above."
)


def mutation_prompt(ctx: ProposalContext, parent: Parent, budget: int, count: Counter) -> Prompt:
    scores = ctx.store.scores(ctx.depth, ctx.run)
    chain = lineage_chain(ctx, parent.id)
    header = [f"{_score_line(parent.score)}. It was made by {parent.individual.operator}: "
              f"{parent.individual.description}"]  # fmt: skip
    if line := _context_line(ctx, scores):
        header.append(line + ".")
    parts = [
        Part(f"The parent: {parent.id}", header),
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
) -> Prompt:
    """Two parents, what each changed since `base`, and the draft to edit (with its conflicts)."""
    repo = ctx.repo
    parts = [insights_part(ctx)]
    for label, parent in (("A", first), ("B", second)):
        commits = repo.git("log", "--format=- %s", f"{base}..{parent.individual.commit}")
        parts.append(
            Part(
                f"Parent {label}: {parent.id}, {_score_line(parent.score)}",
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
    else:
        task = (
            "git merged both parents' changes without conflict into the draft below. Write SEARCH/"
            "REPLACE blocks against the draft that make the two ideas work well together (e.g. retune "
            f"what they share); if the draft is already the best combination, write a line `{NO_CHANGES}` "
            "instead of blocks"
        )
    parts.append(Part("The draft child (your SEARCH blocks must match it)", _fenced(list(draft.items()))))
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
