"""Genome records as commits: branches, trailers, ids, thread safety, and a checkout that stays untouched."""

from __future__ import annotations

import threading

import pytest
from genome_support import git, trailers_by_git

from genome import EditError, Genome, GenomeError, GenomeRepo, rebuild_lineage, sort_key
from genome.edits import Block, Edit


def lr_edit(value: str, description: str | None = None) -> Edit:
    block = Block("LEARNING_RATE = 3e-3  # AdamW\n", f"LEARNING_RATE = {value}  # AdamW\n")
    return Edit(description or f"learning rate {value}", "because", (block,))


def test_a_child_is_a_commit_on_its_branch_with_subject_and_trailers(repo, workspace):
    base = repo.baseline()
    child = repo.apply_edit(base, lr_edit("4e-3", "raise the learning rate"), operator="llm_mutation")
    assert child == Genome(
        run="t1",
        id="g0001",
        commit=git(workspace.root, "rev-parse", "evo/t1/g0001"),
        parents=("g0000",),
        operator="llm_mutation",
        description="raise the learning rate",
        branch="evo/t1/g0001",
    )
    assert git(workspace.root, "log", "-1", "--format=%s", child.branch) == "raise the learning rate"
    assert trailers_by_git(workspace.root, child.branch) == {
        "Evolve-Id": "g0001",
        "Evolve-Operator": "llm_mutation",
        "Evolve-Parents": "g0000",
    }
    assert git(workspace.root, "rev-parse", f"{child.commit}^") == base.commit
    assert "LEARNING_RATE = 4e-3" in git(workspace.root, "show", f"{child.branch}:train.py")
    assert "because" in git(workspace.root, "log", "-1", "--format=%b", child.branch)  # the rationale


def test_generation_zero_has_a_branch_and_baseline_trailers(repo, workspace):
    base = repo.baseline()
    assert base.id == "g0000" and base.parents == () and base.operator == "baseline"
    assert trailers_by_git(workspace.root, "evo/t1/g0000")["Evolve-Parents"] == "none"
    assert repo.ensure_baseline() == base  # idempotent


def test_proposing_children_never_touches_the_users_checkout(repo, workspace):
    root = workspace.root
    (root / "notes.txt").write_text("my notes\n")  # an untracked file of the user's
    head, index = git(root, "rev-parse", "HEAD"), (root / ".git" / "index").read_bytes()
    before = (root / "train.py").read_text()
    parent = repo.baseline()
    for value in ("4e-3", "5e-3", "6e-3"):
        repo.apply_edit(parent, lr_edit(value))
    assert git(root, "rev-parse", "HEAD") == head
    assert (root / ".git" / "index").read_bytes() == index
    assert (root / "train.py").read_text() == before
    assert git(root, "status", "--porcelain") == "?? notes.txt"


def test_ids_are_unique_sortable_and_survive_a_new_repo_object(repo, workspace):
    parent = repo.baseline()
    made = [repo.apply_edit(parent, lr_edit(f"{i}e-3")) for i in range(4, 8)]
    assert [g.id for g in made] == ["g0001", "g0002", "g0003", "g0004"]
    again = GenomeRepo(workspace.root, "t1")  # e.g. after a restart: numbering goes on
    assert again.apply_edit(parent, lr_edit("9e-3")).id == "g0005"
    assert sorted(["g0010", "g0002", "g10000"], key=sort_key) == ["g0002", "g0010", "g10000"]


def test_eight_threads_proposing_at_once_lose_nothing(repo, workspace):
    base = repo.baseline()
    made: list[Genome] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def propose(k: int) -> None:
        try:
            barrier.wait()
            for j in range(3):
                made.append(repo.apply_edit(base, lr_edit(f"{k}.{j}e-3", f"thread {k} child {j}")))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=propose, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(made) == 24 and len({g.id for g in made}) == 24 and len({g.commit for g in made}) == 24
    rebuilt = rebuild_lineage(repo)
    assert set(rebuilt) == set(made) | {base}
    for g in made:
        k, j = g.description.split()[1], g.description.split()[3]
        assert f"LEARNING_RATE = {k}.{j}e-3" in repo.read(g)


def test_two_processes_worth_of_repo_objects_do_not_collide(workspace):
    # Two GenomeRepo objects (as two processes would have) share no lock: create-only refs keep ids unique.
    a, b = GenomeRepo(workspace.root, "t1"), GenomeRepo(workspace.root, "t1")
    base = a.baseline()
    ids = [a.apply_edit(base, lr_edit("4e-3")).id, b.apply_edit(base, lr_edit("5e-3")).id]
    ids += [a.apply_edit(base, lr_edit("6e-3")).id]
    assert len(set(ids)) == 3


def test_bad_edits_are_refused_with_a_reason(repo):
    base = repo.baseline()
    with pytest.raises(EditError, match="changes nothing"):
        repo.apply_edit(base, lr_edit("3e-3"))
    outside = Edit("patch the metric", blocks=(Block("x", "y", path="prepare/metric.py"),))
    with pytest.raises(EditError, match="only train.py may be changed"):
        repo.apply_edit(base, outside)
    with pytest.raises(GenomeError, match="no individual g0042"):
        repo.get("g0042")
    with pytest.raises(GenomeError, match="not a genome id"):
        repo.get("main")
    assert [g.id for g in repo.genomes()] == ["g0000"]


def test_runs_are_separate_namespaces_with_ids_unique_across_them(repo, workspace):
    other = GenomeRepo(workspace.root, "t2")
    base2 = other.ensure_baseline(repo.baseline().commit)
    # the second run's generation 0 takes the next free id and says where its code came from
    assert (base2.id, base2.branch, base2.origin, base2.parents) == ("g0001", "evo/t2/g0001", "g0000", ())
    assert other.ensure_baseline() == base2 == other.baseline()
    child = other.apply_edit(base2, lr_edit("4e-3"))
    assert child.branch == "evo/t2/g0002"
    assert repo.apply_edit(repo.baseline(), lr_edit("5e-3")).id == "g0003"  # one counter for both runs
    assert [g.id for g in repo.genomes()] == ["g0000", "g0003"]
    with pytest.raises(GenomeError, match="not usable in a branch name"):
        GenomeRepo(workspace.root, "bad/run")


def test_an_id_is_never_handed_out_twice_even_after_its_branch_is_deleted(repo, workspace):
    gone = repo.apply_edit(repo.baseline(), lr_edit("4e-3"))
    git(workspace.root, "branch", "-D", gone.branch)  # the highest id: the branches no longer say it was used
    fresh = GenomeRepo(workspace.root, "t1")  # a new process: only git and .evolve/last-id remember
    assert fresh.apply_edit(fresh.baseline(), lr_edit("5e-3")).id == "g0002"
    fresh.reserve(41)  # e.g. the store's highest id
    assert fresh.apply_edit(fresh.baseline(), lr_edit("6e-3")).id == "g0042"
    assert (workspace.root / ".evolve" / "last-id").read_text().strip() == "42"
