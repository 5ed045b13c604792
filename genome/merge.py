"""Merge crossover: the changes of two parents since their common ancestor, combined by git.

`merge_crossover` three-way merges each mutable file (`git merge-file` on temporary files, so
nothing is ever written to a checkout). A clean merge becomes a merge commit whose parents are
(first, second); a conflict returns its hunks (ours/base/theirs) for the LLM crossover to
resolve, and `commit_merge` commits that resolution as a merge commit too. A merge whose result
is just one of the parents is reported as IDENTICAL and not committed: it would be a duplicate.
`plan_merge` is the same merge without the commit, for a caller that words the child's
description from the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from .edits import DEFAULT_PATH
from .errors import GenomeError
from .record import Genome
from .repo import GenomeRepo, git_process

MERGE_OPERATOR = "merge_crossover"
LLM_CROSSOVER_OPERATOR = "llm_crossover"


class MergeStatus(str, Enum):
    CLEAN = "clean"  # committed as a merge commit
    CONFLICT = "conflict"  # hunks returned, nothing written
    IDENTICAL = "identical"  # the merge equals a parent: nothing new, nothing written


@dataclass(frozen=True)
class ConflictHunk:
    """One conflicting region: the first parent's text, the common ancestor's, the second's."""

    path: str
    line: int  # 1-based line of the hunk's start in the first parent's file
    ours: str
    base: str
    theirs: str


@dataclass(frozen=True)
class MergeResult:
    status: MergeStatus
    base: str  # the merge-base commit
    first: Genome
    second: Genome
    genome: Genome | None = None  # the child, when CLEAN
    hunks: tuple[ConflictHunk, ...] = ()
    merged: Mapping[str, str] | None = None  # per file: merged text, with diff3 markers on conflict

    @property
    def is_clean(self) -> bool:
        return self.status is MergeStatus.CLEAN


def merge_base(repo: GenomeRepo, first: Genome, second: Genome) -> str:
    proc = git_process(repo.root, "merge-base", first.commit, second.commit)
    if proc.returncode != 0:
        raise GenomeError(f"{first.id} and {second.id} have no common ancestor; they cannot be merged")
    return proc.stdout.decode().split()[0]


def three_way(ours: str, base: str, theirs: str, labels: tuple[str, str, str] = ("first", "base", "second")):
    """(merged text, number of conflicts) of a diff3-style `git merge-file`."""
    with tempfile.TemporaryDirectory(prefix="evolve-merge-") as tmp:
        paths = []
        for name, text in zip(("ours", "base", "theirs"), (ours, base, theirs), strict=True):
            path = Path(tmp) / name
            path.write_bytes(text.encode())
            paths.append(str(path))
        args = ["merge-file", "-p", "--diff3"]
        for label in labels:
            args += ["-L", label]
        proc = git_process(Path(tmp), *args, *paths)
    if proc.returncode < 0 or proc.returncode >= 128:
        raise GenomeError(f"git merge-file failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(), proc.returncode


def parse_conflicts(text: str, path: str = DEFAULT_PATH) -> tuple[ConflictHunk, ...]:
    """The hunks of a diff3 merge result (`<<<<<<<`, `|||||||`, `=======`, `>>>>>>>`)."""
    hunks = []
    part = None
    parts: dict[str, list[str]] = {}
    ours_line = 0  # lines of the first parent's file seen so far
    start = 0
    for line in text.splitlines(keepends=True):
        if part is None and line.startswith("<<<<<<< "):
            part, parts, start = "ours", {"ours": [], "base": [], "theirs": []}, ours_line + 1
        elif part == "ours" and line.startswith("||||||| "):
            part = "base"
        elif part in ("ours", "base") and line.rstrip("\r\n") == "=======":
            part = "theirs"
        elif part == "theirs" and line.startswith(">>>>>>> "):
            hunks.append(ConflictHunk(path, start, *("".join(parts[k]) for k in ("ours", "base", "theirs"))))
            ours_line += len(parts["ours"])
            part = None
        elif part is None:
            ours_line += 1
        else:
            parts[part].append(line)
    return tuple(hunks)


def _texts(repo: GenomeRepo, commit: str, paths: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for path in paths:
        data = repo.read_exact(commit, path)
        out[path] = data.decode() if data is not None else ""
    return out


def _default_description(first: Genome, second: Genome) -> str:
    return f"merge {first.id} ({first.description}) with {second.id} ({second.description})"


def plan_merge(repo: GenomeRepo, first: Genome, second: Genome) -> MergeResult:
    """Three-way merge of `first` and `second` without committing anything (`genome` stays None):
    CLEAN with the merged text, CONFLICT with its hunks, or IDENTICAL to a parent."""
    if first.commit == second.commit:
        raise GenomeError(f"{first.id} and {second.id} are the same commit; pick two different parents")
    base = merge_base(repo, first, second)
    paths = repo.mutable
    ours, ancestor, theirs = (_texts(repo, c, paths) for c in (first.commit, base, second.commit))
    merged: dict[str, str] = {}
    hunks: list[ConflictHunk] = []
    for path in paths:
        text, conflicts = three_way(ours[path], ancestor[path], theirs[path], (first.id, "base", second.id))
        merged[path] = text
        if conflicts:
            hunks.extend(parse_conflicts(text, path))
    common = dict(base=base, first=first, second=second, merged=merged)
    if hunks:
        return MergeResult(MergeStatus.CONFLICT, hunks=tuple(hunks), **common)
    if merged == ours or merged == theirs:
        return MergeResult(MergeStatus.IDENTICAL, **common)
    return MergeResult(MergeStatus.CLEAN, **common)


def merge_crossover(
    repo: GenomeRepo,
    first: Genome,
    second: Genome,
    description: str | None = None,
    operator: str = MERGE_OPERATOR,
) -> MergeResult:
    """Three-way merge of `first` and `second`; commit it when clean (parents: first, second)."""
    plan = plan_merge(repo, first, second)
    if plan.status is not MergeStatus.CLEAN:
        return plan
    assert plan.merged is not None
    changed = {p: t for p, t in plan.merged.items() if t != _texts(repo, first.commit, (p,))[p]}
    body = f"Three-way merge of {first.id} and {second.id} from their common ancestor {plan.base[:10]}."
    child = repo.commit_child(
        [first, second], changed, description or _default_description(first, second), operator, body=body
    )
    return replace(plan, genome=child)


def commit_merge(
    repo: GenomeRepo,
    first: Genome,
    second: Genome,
    resolved: str | Mapping[str, str],
    description: str,
    operator: str = LLM_CROSSOVER_OPERATOR,
    rationale: str = "",
) -> Genome:
    """Commit a resolution (train.py's text, or text per file) as a merge commit of both parents."""
    files = {DEFAULT_PATH: resolved} if isinstance(resolved, str) else dict(resolved)
    outside = [p for p in files if p not in repo.mutable]
    if outside:
        raise GenomeError(f"a crossover may only change {', '.join(repo.mutable)}, not {', '.join(outside)}")
    for path, text in files.items():
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in text.splitlines()):
            raise GenomeError(f"the resolution of {path} still has conflict markers; resolve every hunk")
    return repo.commit_child([first, second], files, description, operator, body=rationale)
