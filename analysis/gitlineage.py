"""The lineage from git alone: what a workspace without its `.evolve/evolve.db` still tells.

Every individual is a commit on `evo/<run>/<id>` whose trailers name its id, operator and
parents (genome's `GenomeRepo.genomes()` reads them back). That is enough for the family tree,
the operators and the descriptions; scores, statuses and costs lived in the store and are NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genome.errors import GenomeError
from genome.merge import MERGE_OPERATOR
from genome.record import BRANCH_PREFIX, RUN_RE
from genome.repo import GenomeRepo, run_git

from .columns import LINEAGE_COLUMNS
from .errors import AnalysisError


def git_runs(root: Path) -> list[str]:
    """The run names that have `evo/<run>/<id>` branches in the repository."""
    out = run_git(root, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}/")
    names = {ref.split("/")[3] for ref in out.splitlines() if ref.count("/") == 4}
    return sorted(n for n in names if RUN_RE.match(n))


def _commit_times(root: Path, commits: list[str]) -> dict[str, float]:
    if not commits:
        return {}
    out = run_git(
        root, "log", "--no-walk=unsorted", "--stdin", "--format=%H %ct", input="\n".join(commits).encode()
    )
    return {sha: float(t) for sha, t in (line.split() for line in out.splitlines() if line.strip())}


def _kind(operator: str, parents: tuple[str, ...]) -> str | None:
    if not parents:
        return None
    if len(parents) == 1:
        return "mutation"
    return "merge" if operator == MERGE_OPERATOR else "crossover"


def lineage_from_git(root: Path, run: str | None = None) -> pd.DataFrame:
    """One row per individual found in git, with the store-only columns left empty (NaN)."""
    runs = git_runs(root)
    if run is not None:
        if run not in runs:
            raise AnalysisError(
                f"no run {run!r} in the git branches of {root} (runs: {', '.join(runs) or 'none'})"
            )
        runs = [run]
    if not runs:
        raise AnalysisError(
            f"{root} has no store (.evolve/evolve.db) and no {BRANCH_PREFIX}/<run>/<id> branches: nothing to analyse"
        )
    rows = []
    for name in runs:
        try:
            genomes = GenomeRepo(root, name).genomes()
        except GenomeError as exc:
            raise AnalysisError(f"cannot read run {name!r} from git: {exc}") from None
        generation: dict[str, int] = {}
        for g in genomes:  # sorted by id, so parents (older) come first
            generation[g.id] = 1 + max((generation.get(p, 0) for p in g.parents), default=-1)
            rows.append(
                {
                    "id": g.id, "run": g.run, "commit": g.commit, "branch": g.branch, "parents": g.parents,
                    "parent": g.parents[0] if g.parents else None, "kind": _kind(g.operator, g.parents),
                    "origin": g.origin or None,
                    "operator": g.operator, "generation": generation[g.id], "description": g.description,
                }
            )  # fmt: skip
    df = pd.DataFrame.from_records(rows)
    created = _commit_times(root, list(df["commit"]))
    df["created"] = pd.to_datetime(df["commit"].map(created).astype("float64"), unit="s", utc=True)
    for col in LINEAGE_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df = df[list(LINEAGE_COLUMNS)].astype(
        {"status": object, "decision": object, "verdict": object, "origin": object}
    )
    df.attrs.update(source="git", db=None, root=str(root), search_depth={}, noise_floor={}, runs={})
    return df.reset_index(drop=True)
