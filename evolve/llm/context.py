"""What a prompt tells the LLM about the run: everything read here comes from the store and git.

Each function returns a `Part` (see `budget`): the parent's header (its score, its training
summary, the run's setting, the noise floor and the acceptance rule: required), its children
already tried with their deltas, the meta-insights, the lineage, the failures of the lineage with
their log tails, and inspirations from elsewhere in the population. Nothing is written.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genome.edits import DEFAULT_PATH

from ..pairs import Changes, changes, files_at
from ..promotion import PromotionPolicy, describe_rule
from ..store import Individual, Status
from .budget import Part

if TYPE_CHECKING:
    from genome.repo import GenomeRepo

    from ..operators.base import Parent, ProposalContext
    from ..pairs import Match
    from ..promotion import Score

PRIORITY_CHILDREN = 60
PRIORITY_INSIGHTS = 50
PRIORITY_LINEAGE = 40
PRIORITY_FAILURES = 30
PRIORITY_INSPIRATIONS = 20
DIFF_LINES = 80  # lines of one inspiration's diff
LOG_LINES = 25  # lines of one failure's log tail
LINEAGE_DEPTH = 12
MAX_FAILURES = 5
MAX_CHILDREN = 20
ELITES = 3
DIVERSE = 2


def program_text(repo: GenomeRepo) -> str:
    """program.md as the user has it now (edits apply to the next prompt), else the packaged one."""
    path = Path(repo.root) / "program.md"
    if path.is_file():
        return path.read_text()
    from genome.workspace import default_program

    return default_program()


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


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def score_line(score: Score | None) -> str:
    if score is None:
        return "not scored yet"
    return f"val_bpb {score.mean:.6f} ± {score.std:.4f} over {score.n} seed(s)"


def files_part(repo: GenomeRepo, commit: str, owner: str, title_hint: str) -> Part:
    """The mutable files at `commit`, in full: SEARCH blocks must match them exactly."""
    files = [(p, data.decode()) for p in repo.mutable if (data := repo.read_exact(commit, p)) is not None]
    return Part(f"{DEFAULT_PATH} of {owner} ({title_hint})" if len(files) <= 1 else f"The files of {owner}",
                fenced(files))  # fmt: skip


def fenced(files: Sequence[tuple[str, str]]) -> list[str]:
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


def lineage_part(
    ctx: ProposalContext,
    chain: list[Individual],
    scores: Mapping[str, Score],
    title: str = "Its lineage (newest first)",
) -> Part:
    items = []
    for k, ind in enumerate(chain):
        older = chain[k + 1] if k + 1 < len(chain) else None
        score = scores.get(ind.id)
        line = f"- {ind.id} [{ind.operator}] {ind.description}: {fmt(score.mean if score else None)}"
        if score and older is not None and older.id in scores:
            line += f" ({score.mean - scores[older.id].mean:+.6f} vs {older.id})"
        items.append(line)
    return Part(title, items, PRIORITY_LINEAGE)


def failures_part(ctx: ProposalContext, chain: Sequence[Individual]) -> Part:
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


def inspirations_part(ctx: ProposalContext, exclude: set[str], scores: Mapping[str, Score]) -> Part:
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
            f"### {ind.id} ({label}, {fmt(score.mean if score else None)}{delta}): {ind.description}\n"
            f"```diff\n{diff(ctx.repo, ind.commit + '^1', ind.commit)}\n```"
        )
    return Part(
        "Inspirations",
        items,
        PRIORITY_INSPIRATIONS,
        intro="Other individuals of this run and what they changed relative to their own parent.",
    )


def insights_part(ctx: ProposalContext) -> Part:
    """The newest version of the run's notebook (each version replaces the one before)."""
    latest = ctx.store.insight_versions(ctx.run, limit=1)
    if not latest:
        return Part("What the search has learned so far", [], PRIORITY_INSIGHTS)
    notes = latest[-1]
    return Part(
        f"What the search has learned so far (notes version {notes.version}, from {notes.children} children)",
        [notes.text.strip()],
        PRIORITY_INSIGHTS,
    )


# ---------------------------------------------------------------------------------------------
# The setting, the parent's training, its children, the rule
# ---------------------------------------------------------------------------------------------
def setting(ctx: ProposalContext, parent: Parent | None = None) -> str:
    """Where and how long every experiment trains: device, profile, budget, depth."""
    run = ctx.store.get_run(ctx.run)
    saved: Mapping[str, Any] = run.settings if run is not None else {}
    profile_name = str(saved.get("profile") or ctx.settings.profile)
    budget = float(saved.get("budget") or ctx.settings.budget)
    depth = int(saved.get("depth") or ctx.depth)
    device, gpu = _device(ctx, parent)
    unit = "seconds"
    try:
        from prepare.profiles import get_profile

        p = get_profile(profile_name)
        shape = f" (sequence {p.seq_len}, vocabulary {p.vocab_size})"
        device = device or p.device
        unit = p.budget_unit
    except Exception:  # an unknown profile name: say what is known
        shape = ""
    where = f"{gpu} ({device})" if gpu and gpu != device else device or "an unknown device"
    from prepare.profiles import budget_text

    amount = budget_text(budget, unit)
    line = (
        f"Every experiment trains at depth {depth} for {amount} on {where}, profile {profile_name}{shape}, "
        f"then val_bpb is measured on a fixed validation set."
    )
    if device.startswith("cpu"):
        line += (
            " Only the CPU code path of train.py runs: a setting used only on CUDA (compilation, GPU batch "
            "sizes, kernels) cannot change the score here."
        )
    return line


def _device(ctx: ProposalContext, parent: Parent | None) -> tuple[str, str]:
    """(device, GPU name) of the parent's latest run, else of the run's latest evaluation."""
    evals = ctx.store.evaluations(parent.id) if parent is not None else []
    if not evals:
        evals = ctx.store.evaluations(run=ctx.run)[-20:]
    for e in reversed(evals):
        if e.device or e.gpu_name:
            kind = "cpu" if e.device.startswith("cpu") or not e.gpu_name else "cuda"
            gpu = "" if kind == "cpu" else e.gpu_name
            return (e.device if e.device.startswith(("cpu", "cuda")) else kind), gpu
    return "", ""


# (metric key, label, format): what train.py's summary reports, as far as the run recorded it.
SUMMARY = (
    ("num_steps", "steps", "{:,.0f}"),
    ("tokens_per_second", "tokens/s", "{:,.0f}"),
    ("mfu_percent", "MFU", "{:.1f}%"),
    ("peak_vram_mb", "peak memory", "{:,.0f} MiB"),
    ("num_params_M", "parameters", "{:.2f}M"),
    ("total_tokens_M", "tokens", "{:.2f}M"),
    ("training_seconds", "training", "{:.1f} s"),
)


def training_summary(ctx: ProposalContext, individual: str) -> str:
    """The mean of the individual's ok runs at the search depth: steps, tokens/s, MFU, memory."""
    runs = [e for e in ctx.store.evaluations(individual) if e.ok and e.depth == ctx.depth
            and e.purpose.value != "validation"]  # fmt: skip
    if not runs:
        return ""
    values: dict[str, list[float]] = {}
    for e in runs:
        m = dict(e.metrics)
        seconds, tokens = m.get("training_seconds"), m.get("total_tokens_M")
        if "tokens_per_second" not in m and _num(seconds) and _num(tokens) and seconds > 0:
            m["tokens_per_second"] = tokens * 1e6 / seconds
        for key, _, _ in SUMMARY:
            if _num(m.get(key)):
                values.setdefault(key, []).append(float(m[key]))
    shown = [
        f"{label} {form.format(sum(v) / len(v))}" for key, label, form in SUMMARY if (v := values.get(key))
    ]
    if not shown:
        return ""
    return (
        f"Its training ({'mean of ' + str(len(runs)) + ' runs' if len(runs) > 1 else 'one run'}): "
        + ", ".join(shown)
    )


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rule(ctx: ProposalContext) -> str:
    """The noise floor and the acceptance rule, as promotion applies it."""
    floor = f"±{ctx.noise_floor:.4f}" if ctx.noise_floor else "not measured yet"
    text = ctx.acceptance or describe_rule(PromotionPolicy())  # the default rule, without the run's noise
    return f"Seed-to-seed noise floor of val_bpb: {floor}. How a child is judged: {text}"


def standing(ctx: ProposalContext, scores: Mapping[str, Score]) -> str:
    """The baseline's score and the best so far."""
    best = min(scores.items(), key=lambda kv: kv[1].mean) if scores else None
    base = scores.get(ctx.baseline)
    parts = []
    if base:
        parts.append(f"baseline {ctx.baseline}: {base.mean:.6f}")
    if best:
        parts.append(f"best so far {best[0]}: {best[1].mean:.6f}")
    return "; ".join(parts) + "." if parts else ""


def outcome(ctx: ProposalContext, ind: Individual, scores: Mapping[str, Score], against: str) -> str:
    """What became of a child: its delta against `against`, or why it has no score."""
    score = scores.get(ind.id)
    ref = scores.get(against)
    decided = {"accept": ", accepted", "reject": ", rejected"}.get(ind.decision or "", "")
    if score is not None:
        delta = f" ({score.mean - ref.mean:+.6f} vs {against})" if ref else ""
        return f"{score.mean:.6f}{delta}{decided}"
    if ind.status is Status.REJECTED:
        return f"refused: {' '.join((ind.guard_reason or '').split())[:160]}"
    if ind.status is Status.FAILED:
        evals = ctx.store.evaluations(ind.id)
        why = (evals[-1].reason or evals[-1].status) if evals else "no evaluation"
        return f"failed: {' '.join(why.split())[:160]}"
    return f"{ind.status.value}, not scored yet"


def children_part(ctx: ProposalContext, parents: Sequence[str], scores: Mapping[str, Score]) -> Part:
    """Children already proposed from these parents (all of them), newest first, with what became of them."""
    wanted = set(parents)
    kids = [i for i in ctx.store.individuals(ctx.run) if wanted <= set(i.parents)]
    against = min(parents, key=lambda p: (scores[p].mean if p in scores else math.inf, p))
    cache: dict[str, dict[str, str]] = {}
    base = files_at(ctx.repo, ctx.store.get(against).commit, cache) if ctx.store.get(against) else {}
    items = []
    for ind in reversed(kids[-MAX_CHILDREN:]):
        changed = changed_text(changes(base, files_at(ctx.repo, ind.commit, cache))) if base else ""
        what = f" {{{changed}}}" if changed else ""
        items.append(
            f"- {ind.id} [{ind.operator}] {ind.description}{what}: {outcome(ctx, ind, scores, against)}"
        )
    who = parents[0] if len(parents) == 1 else " and ".join(parents)
    return Part(
        f"Children of {who} already tried (newest first)",
        items,
        PRIORITY_CHILDREN,
        intro=f"What each changed against {against} is in braces, then what it measured. Do not propose one of "
        "these again; build on what worked, or change what failed in a way that answers why it failed.",
    )


def changed_text(found: Changes) -> str:
    """`MATRIX_LR 0.04 -> 0.06; 1 code hunk(s)`: what a diff changed, in a few words."""

    def knob(name: str, old: str | None, new: str | None) -> str:
        if old is None:
            return f"new {name} = {new}"
        return f"{name} {old} -> {new}" if new is not None else f"{name} {old} -> not a constant"

    knobs = ", ".join(knob(k, old, new) for k, (old, new) in list(found.knobs.items())[:6])
    code = f"{len(found.regions)} code hunk(s)" if found.regions else ""
    return "; ".join(x for x in (knobs, code) if x)


def pair_line(first: str, match: Match | None) -> str:
    """Why the crossover's parents were paired: what each changed since their common ancestor."""
    if match is None:
        return ""
    what = lambda found: changed_text(found) or "nothing"

    base = match.base_id or match.base[:10]
    kind = ("complementary changes, both better than it", "different changes", "overlapping changes")[
        match.tier
    ]
    return (
        f"Since their common ancestor {base} ({kind}): {first} changed {what(match.first)}; "
        f"{match.partner.id} changed {what(match.second)}."
    )
