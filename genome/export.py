"""Export: one individual's train.py as a plain commit on a branch the user can push.

`export(repo, "g0042", "champion")` gives branch `champion` one new commit on top of the base
branch (default `main`) whose train.py is g0042's, with a message that lists the lineage's changes
from the baseline to g0042 (with scores, when given). It never touches uncommitted work: it
refuses to run while the checkout has any. Exporting onto the checked-out branch itself (`--branch
main` with base `main`) fast-forwards the checkout. `evolve init --run NEXT` then starts the next
run from it (or `git clone -b champion` and `evolve init` there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import GenomeError
from .lineage import ancestors
from .record import BRANCH_PREFIX, EXPORT_TRAILER, Genome, one_line
from .repo import MACHINE_IDENTITY, GenomeRepo, git_process

CHAMPION = "champion"


@dataclass(frozen=True)
class ExportResult:
    branch: str
    commit: str
    base: str  # the base commit the new one sits on
    genome: Genome
    message: str


def resolve_genome_id(ref: str, champion: Callable[[], str] | None = None) -> str:
    """`ref` itself, or the champion's id when `ref` is "champion" and a resolver is given."""
    if ref != CHAMPION:
        return ref
    if champion is None:
        raise GenomeError(
            "'champion' needs the run's scores, which are not available here; "
            "pass an id such as g0042 (`evolve status` lists the best)"
        )
    return champion()


def _format_score(score: float | str) -> str:
    return f"val_bpb {score:.6f}" if isinstance(score, float) else str(score)


def export_message(genome: Genome, lineage: list[Genome], scores: Mapping[str, float | str] | None) -> str:
    scores = scores or {}
    subject = one_line(f"train.py from {genome.run}/{genome.id}: {genome.description}", 120)
    lines = [f"Changes from the baseline to {genome.id}, in order (run {genome.run}):", ""]
    for g in lineage:
        parents = f" <- {'+'.join(g.parents)}" if g.parents else ""
        score = f" [{_format_score(scores[g.id])}]" if g.id in scores else ""
        # a baseline's description already starts with its operator ("baseline: train.py, ...")
        description = g.description.removeprefix(f"{g.operator}: ")
        lines.append(f"- {g.id} {g.operator}{parents}: {description}{score}")
    trailer = f"{EXPORT_TRAILER}: {genome.run}/{genome.id} {genome.commit}"
    return f"{subject}\n\n" + "\n".join(lines) + f"\n\n{trailer}\n"


def _identity(root: Path) -> dict[str, str]:
    configured = all(git_process(root, "config", key).returncode == 0 for key in ("user.name", "user.email"))
    return {} if configured else dict(MACHINE_IDENTITY)


def export(
    repo: GenomeRepo,
    genome_id: str,
    branch: str,
    base: str = "main",
    scores: Mapping[str, float | str] | None = None,
    champion: Callable[[], str] | None = None,
) -> ExportResult:
    """Give `branch` one new commit on top of `base` holding `genome_id`'s mutable files."""
    genome_id = resolve_genome_id(genome_id, champion)
    if (
        branch.startswith(f"{BRANCH_PREFIX}/")
        or git_process(repo.root, "check-ref-format", "--branch", branch).returncode
    ):
        raise GenomeError(f"{branch!r} is not a usable branch name (and evo/... is reserved for individuals)")
    dirty = repo.user_changes()
    if dirty:
        raise GenomeError(
            f"the checkout has uncommitted changes ({', '.join(dirty[:5])}); commit or stash them before exporting"
        )
    genome = repo.get(genome_id)
    lineage = ancestors(repo.genomes(), genome_id)
    base_ref = base if base.startswith("refs/") else f"refs/heads/{base}"
    if git_process(repo.root, "show-ref", "--verify", "--quiet", base_ref).returncode != 0:
        raise GenomeError(f"there is no branch {base!r} to export onto; pass --base with an existing branch")
    base_commit = repo.resolve(base_ref)
    files = {}
    for path in repo.mutable:
        data = repo.read_exact(genome.commit, path)
        if data is not None:
            files[path] = data
    tree = repo.write_tree(base_commit, files)
    if tree == repo.git("rev-parse", f"{base_commit}^{{tree}}"):
        raise GenomeError(f"{base} already has {genome_id}'s {', '.join(files)}; there is nothing to export")
    message = export_message(genome, lineage, scores)
    args = ["commit-tree", tree, "-p", base_commit, "-F", "-"]
    commit = repo.git(*args, input=message.encode(), env=_identity(repo.root))
    target = f"refs/heads/{branch}"
    exists = git_process(repo.root, "show-ref", "--verify", "--quiet", target).returncode == 0
    if exists and repo.resolve(target) != base_commit:
        raise GenomeError(
            f"branch {branch!r} already exists; pick a new name, or put the commit on top of it with --base {branch}"
        )
    head = git_process(repo.root, "symbolic-ref", "--quiet", "HEAD").stdout.decode().strip()
    if head == target:
        repo.git("merge", "--ff-only", "--quiet", commit)  # moves the branch and the (clean) checkout
    else:
        repo.git("update-ref", target, commit, base_commit if exists else "0" * 40)
    return ExportResult(branch=branch, commit=commit, base=base_commit, genome=genome, message=message)
