"""The lineage from git alone: branches `evo/<run>/<id>` and their trailers are the family tree.

The store may be lost; `rebuild_lineage` recovers (id, parents, operator, subject, commit) of
every individual, and `verify_lineage` checks that git agrees with the trailers: each child's
commit has its parents' commits as its git parents, in order (so a crossover is a real merge).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import GenomeError
from .record import BRANCH_PREFIX, Genome, sort_key
from .repo import GenomeRepo, run_git


def runs(root: Path | str) -> list[str]:
    """The run names that have individuals in this repository."""
    out = run_git(Path(root), "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}/")
    names = {ref.split("/")[3] for ref in out.splitlines() if ref.count("/") >= 4}
    return sorted(names)


def rebuild_lineage(repo: GenomeRepo | Path | str, run: str | None = None) -> list[Genome]:
    """Every individual of `run` (or of every run), sorted by run then id."""
    if isinstance(repo, GenomeRepo):
        return repo.genomes() if run in (None, repo.run) else GenomeRepo(repo.root, run).genomes()
    names = [run] if run else runs(repo)
    return [g for name in names for g in GenomeRepo(repo, name).genomes()]


def by_id(genomes: Iterable[Genome]) -> dict[str, Genome]:
    return {g.id: g for g in genomes}


def ancestors(genomes: Iterable[Genome], genome_id: str) -> list[Genome]:
    """The genome and all its ancestors, root first (ids grow from parent to child)."""
    index = by_id(genomes)
    if genome_id not in index:
        raise GenomeError(f"no individual {genome_id} in this lineage")
    seen: dict[str, Genome] = {}
    todo = [genome_id]
    while todo:
        gid = todo.pop()
        if gid in seen:
            continue
        if gid not in index:
            raise GenomeError(f"the lineage names a parent {gid} that has no branch; it was deleted")
        seen[gid] = index[gid]
        todo.extend(index[gid].parents)
    return sorted(seen.values(), key=lambda g: sort_key(g.id))


def verify_lineage(repo: GenomeRepo) -> list[str]:
    """Problems with the run's lineage (empty when sound): missing parents, git parents that
    disagree with the trailers, crossovers that are not two-parent merge commits."""
    problems = []
    genomes = repo.genomes()  # raises if a tip lacks its trailers
    index = by_id(genomes)
    for genome in genomes:
        commit_parents = run_git(repo.root, "rev-list", "--parents", "-n", "1", genome.commit).split()[1:]
        if genome.is_baseline:
            continue
        missing = [p for p in genome.parents if p not in index]
        if missing:
            problems.append(f"{genome.id}: parent(s) {', '.join(missing)} have no branch")
            continue
        expected = [index[p].commit for p in genome.parents]
        if commit_parents != expected:
            problems.append(f"{genome.id}: git parents {commit_parents} differ from {genome.parents}")
        if "crossover" in genome.operator and len(commit_parents) != 2:
            problems.append(f"{genome.id}: a {genome.operator} child must be a merge commit with two parents")
    return problems
