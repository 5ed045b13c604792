"""The lineage rebuilt from git alone (branches and trailers) equals the records made while evolving."""

from __future__ import annotations

import pytest
from genome_support import git

from genome import (
    GenomeError,
    GenomeRepo,
    ancestors,
    commit_hyperparams,
    merge_crossover,
    rebuild_lineage,
    runs,
    verify_lineage,
)
from genome.edits import Block, Edit


def grow(repo):
    """A small family: mutations, an Optuna tweak, a merge crossover, an LLM-resolved crossover."""
    from genome import commit_merge

    base = repo.baseline()
    a = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    b = repo.apply_edit(
        base, Edit("SiLU", blocks=(Block("        x = F.relu(x).square()\n", "        x = F.silu(x)\n"),))
    )
    c = merge_crossover(repo, a, b).genome
    d = commit_hyperparams(repo, c, {"LEARNING_RATE": 5e-3}, operator="optuna")
    e = commit_hyperparams(repo, a, {"LEARNING_RATE": 6e-3})
    f = commit_merge(repo, d, e, repo.read(d), "keep d's learning rate")
    return [base, a, b, c, d, e, f]


def test_rebuilt_lineage_equals_the_records_created(repo, workspace):
    made = grow(repo)
    assert rebuild_lineage(workspace.root, "t1") == made
    assert rebuild_lineage(repo) == made
    assert GenomeRepo(workspace.root, "t1").genomes() == made  # a fresh object, no memory
    assert [(g.id, g.parents, g.operator) for g in made[3:4]] == [
        ("g0003", ("g0001", "g0002"), "merge_crossover")
    ]
    assert verify_lineage(repo) == []


def test_ancestors_run_from_the_root_to_the_genome(repo):
    made = grow(repo)
    assert [g.id for g in ancestors(made, "g0004")] == ["g0000", "g0001", "g0002", "g0003", "g0004"]
    assert [g.id for g in ancestors(made, "g0005")] == ["g0000", "g0001", "g0005"]
    with pytest.raises(GenomeError, match="no individual g0099"):
        ancestors(made, "g0099")


def test_lineage_across_runs(repo, workspace):
    grow(repo)
    other = GenomeRepo(workspace.root, "t2")
    other.ensure_baseline(repo.get("g0004").commit)
    commit_hyperparams(other, other.baseline(), {"DROPOUT": 0.1})
    assert runs(workspace.root) == ["t1", "t2"]
    everything = rebuild_lineage(workspace.root)
    # one counter for the workspace: t2's generation 0 takes the next free id, and names g0004
    assert [(g.run, g.id) for g in everything][-3:] == [("t1", "g0006"), ("t2", "g0007"), ("t2", "g0008")]
    assert other.baseline().origin == "g0004"


def test_a_branch_moved_by_hand_is_reported_clearly(repo, workspace):
    made = grow(repo)
    git(workspace.root, "branch", "-f", "evo/t1/g0002", "main")  # points at a commit of another id
    with pytest.raises(GenomeError, match="evo/t1/g0002 holds a commit whose Evolve-Id is g0000"):
        rebuild_lineage(repo)
    plain = git(
        workspace.root, "commit-tree", "-p", made[1].commit, "-m", "hand-made", f"{made[1].commit}^{{tree}}"
    )
    git(workspace.root, "branch", "-f", "evo/t1/g0002", plain)
    with pytest.raises(GenomeError, match="lacks the Evolve-Id, Evolve-Operator, Evolve-Parents trailer"):
        rebuild_lineage(repo)
    git(workspace.root, "branch", "-f", "evo/t1/g0002", made[2].commit)  # put it back
    assert rebuild_lineage(repo) == made


def test_verify_finds_git_parents_that_disagree_with_the_trailers(repo, workspace):
    grow(repo)
    # A forged crossover: trailers claim two parents, the commit has one.
    forged = repo.commit_child(
        [repo.get("g0001")], {"train.py": repo.read("evo/t1/g0002")}, "forged", "llm_crossover"
    )
    message = git(workspace.root, "log", "-1", "--format=%B", forged.commit).replace(
        "Evolve-Parents: g0001", "Evolve-Parents: g0001,g0002"
    )
    fake = git(
        workspace.root,
        "commit-tree",
        "-p",
        repo.get("g0001").commit,
        "-m",
        message,
        f"{forged.commit}^{{tree}}",
    )
    git(workspace.root, "branch", "-f", forged.branch, fake)
    problems = verify_lineage(repo)
    assert any("git parents" in p for p in problems)
    assert any("must be a merge commit with two parents" in p for p in problems)
    git(workspace.root, "branch", "-D", forged.branch)  # leave the repository sound for the after-test check
