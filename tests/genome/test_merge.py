"""Merge crossover: clean merges become two-parent merge commits; conflicts return hunks and write nothing."""

from __future__ import annotations

import pytest
from genome_support import git

from genome import GenomeError, MergeStatus, commit_hyperparams, commit_merge, merge_crossover
from genome.edits import Block, Edit


def snapshot(root):
    """Everything a merge must leave alone: refs, HEAD, index, status."""
    return (
        git(root, "for-each-ref"),
        git(root, "rev-parse", "HEAD"),
        (root / ".git" / "index").read_bytes(),
        git(root, "status", "--porcelain", "--ignored"),
    )


def test_a_clean_merge_is_a_merge_commit_with_both_changes(repo, workspace):
    base = repo.baseline()
    lr = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    act = repo.apply_edit(
        base,
        Edit(
            "SiLU in the MLP", blocks=(Block("        x = F.relu(x).square()\n", "        x = F.silu(x)\n"),)
        ),
    )
    result = merge_crossover(repo, lr, act)
    assert result.status is MergeStatus.CLEAN and result.is_clean and result.base == base.commit
    child = result.genome
    assert child.parents == (lr.id, act.id) and child.operator == "merge_crossover"
    assert git(workspace.root, "rev-list", "--parents", "-n", "1", child.commit).split()[1:] == [
        lr.commit,
        act.commit,
    ]
    text = repo.read(child)
    assert "LEARNING_RATE = 4e-3" in text and "x = F.silu(x)" in text
    assert git(workspace.root, "status", "--porcelain") == ""


def test_a_conflict_returns_hunks_and_leaves_the_repository_as_it_was(repo, workspace):
    base = repo.baseline()
    a = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    b = commit_hyperparams(repo, base, {"LEARNING_RATE": 5e-3})
    before = snapshot(workspace.root)
    result = merge_crossover(repo, a, b)
    assert result.status is MergeStatus.CONFLICT and result.genome is None
    assert snapshot(workspace.root) == before
    (hunk,) = result.hunks
    assert hunk.path == "train.py" and hunk.line == 17
    assert hunk.ours == "LEARNING_RATE = 4e-3  # AdamW\n"
    assert hunk.base == "LEARNING_RATE = 3e-3  # AdamW\n"
    assert hunk.theirs == "LEARNING_RATE = 5e-3  # AdamW\n"
    assert "<<<<<<< " + a.id in result.merged["train.py"]

    # An LLM's resolution is committed as a merge commit of both parents.
    resolved = repo.read(a).replace("LEARNING_RATE = 4e-3", "LEARNING_RATE = 4.5e-3")
    child = commit_merge(repo, a, b, resolved, "split the difference: lr 4.5e-3")
    assert child.parents == (a.id, b.id) and child.operator == "llm_crossover"
    assert git(workspace.root, "rev-list", "--parents", "-n", "1", child.commit).split()[1:] == [
        a.commit,
        b.commit,
    ]
    with pytest.raises(GenomeError, match="conflict markers"):
        commit_merge(repo, a, b, result.merged["train.py"], "unresolved")


def test_merging_with_an_ancestor_is_identical_and_writes_nothing(repo, workspace):
    base = repo.baseline()
    a = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    a2 = commit_hyperparams(repo, a, {"DROPOUT": 0.1})
    before = snapshot(workspace.root)
    result = merge_crossover(repo, a, a2)
    assert result.status is MergeStatus.IDENTICAL and result.genome is None
    assert snapshot(workspace.root) == before
    with pytest.raises(GenomeError, match="same commit"):
        merge_crossover(repo, a, a)


def test_a_merge_of_two_merges_keeps_all_four_ideas(repo):
    # Changes on lines apart (git treats changes to adjacent lines as one conflict).

    base = repo.baseline()
    kids = [commit_hyperparams(repo, base, {k: v}) for k, v in
            (("LEARNING_RATE", 4e-3), ("N_EMBD", 96), ("BATCH_SIZE", 16), ("WARMDOWN_FRAC", 0.7))]  # fmt: skip
    left = merge_crossover(repo, kids[0], kids[1]).genome
    right = merge_crossover(repo, kids[2], kids[3]).genome
    top = merge_crossover(repo, left, right)
    assert top.is_clean
    text = repo.read(top.genome)
    for line in ("LEARNING_RATE = 4e-3", "N_EMBD = 96", "BATCH_SIZE = 16", "WARMDOWN_FRAC = 0.7"):
        assert line in text
