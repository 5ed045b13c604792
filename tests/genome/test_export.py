"""Export: one commit on top of the base branch with the champion's train.py; the next run starts from it."""

from __future__ import annotations

import sys
import types

import pytest
from click.testing import CliRunner
from genome_support import git

from evolve.cli import main
from genome import GenomeError, commit_hyperparams, export, init_workspace, merge_crossover, rebuild_lineage


def family(repo):
    base = repo.baseline()
    a = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    b = commit_hyperparams(repo, base, {"BATCH_SIZE": 16})
    c = merge_crossover(repo, a, b).genome
    noise = commit_hyperparams(repo, base, {"DROPOUT": 0.3})  # not an ancestor of c
    return base, a, b, c, noise


def test_export_adds_one_commit_on_the_base_with_the_lineage_in_its_message(repo, workspace):
    root = workspace.root
    base, a, b, c, noise = family(repo)
    main_before = git(root, "rev-parse", "main")
    result = export(repo, c.id, "champion", scores={"g0000": 0.998, a.id: 0.991, c.id: 0.985})
    assert result.branch == "champion" and result.base == main_before
    assert git(root, "rev-list", "--parents", "-n", "1", "champion").split()[1:] == [
        main_before
    ]  # one commit, on main
    assert git(root, "show", "champion:train.py") + "\n" == repo.read(c)
    assert git(root, "diff", "--name-only", "main", "champion") == "train.py"
    message = git(root, "log", "-1", "--format=%B", "champion")
    lines = message.splitlines()
    assert lines[0].startswith(f"train.py from t1/{c.id}")
    listed = [ln for ln in lines if ln.startswith("- ")]
    assert [ln.split()[1] for ln in listed] == ["g0000", a.id, b.id, c.id]  # root -> champion, not the noise
    assert base.description.startswith("baseline: ")
    assert listed[0].startswith(f"- g0000 baseline: {base.description.removeprefix('baseline: ')} [")  # once
    assert (
        "[val_bpb 0.998000]" in listed[0] and "[val_bpb 0.985000]" in listed[3] and "val_bpb" not in listed[2]
    )
    assert f"Evolved-From: t1/{c.id} {c.commit}" in message
    assert "Evolve-Id" not in message  # a plain commit, not an individual
    assert git(root, "rev-parse", "main") == main_before and git(root, "status", "--porcelain") == ""
    assert rebuild_lineage(repo)[-1] == noise  # individuals unchanged


def test_export_refuses_uncommitted_work_existing_branches_and_bad_names(repo, workspace):
    base, a, *_ = family(repo)
    (workspace.root / "train.py").write_text("my local experiment\n")
    with pytest.raises(GenomeError, match=r"uncommitted changes \(train.py\)"):
        export(repo, a.id, "champion")
    git(workspace.root, "checkout", "--", "train.py")
    export(repo, a.id, "first")
    with pytest.raises(GenomeError, match="branch 'first' already exists"):
        export(repo, a.id, "first")
    with pytest.raises(GenomeError, match="not a usable branch name"):
        export(repo, a.id, "evo/t1/mine")
    with pytest.raises(GenomeError, match="no branch 'develop'"):
        export(repo, a.id, "other", base="develop")
    with pytest.raises(GenomeError, match="nothing to export"):
        export(repo, base.id, "same")


def test_champion_needs_a_resolver(repo):
    _, a, *_ = family(repo)
    with pytest.raises(GenomeError, match="'champion' needs the run's scores"):
        export(repo, "champion", "best")
    result = export(repo, "champion", "best", champion=lambda: a.id)
    assert result.genome == a


def test_export_onto_the_checked_out_branch_then_start_the_next_run_in_place(repo, workspace):
    root = workspace.root
    *_, c, _ = family(repo)
    export(repo, c.id, "main", base="main")  # the champion becomes the new baseline commit
    assert (root / "train.py").read_text() == repo.read(c)  # the checkout moved with it
    assert git(root, "status", "--porcelain") == ""
    ws2 = init_workspace(root, "t2")
    base2 = ws2.repo().baseline()
    assert ws2.repo().read(base2) == repo.read(c)
    assert git(root, "rev-parse", f"{base2.commit}~1") == git(root, "rev-parse", "main~1")


def test_a_clone_of_the_exported_branch_is_adopted_by_init(repo, workspace, tmp_path):
    *_, c, _ = family(repo)
    export(repo, c.id, "champion")
    clone = tmp_path / "next"
    git(tmp_path, "clone", "-q", "--branch", "champion", str(workspace.root), str(clone))
    head = git(clone, "rev-parse", "HEAD")
    ws = init_workspace(clone)  # evolve.toml came along; its run has no branches here yet
    assert ws.run == "t1" and ws.settings.profile == "tiny"
    base = ws.repo().baseline()
    assert ws.repo().read(base) == repo.read(c)
    assert git(clone, "rev-parse", "HEAD") == head  # nothing to commit: generation 0 sits on top
    assert git(clone, "rev-parse", f"{base.commit}^") == head
    assert base.id == "g0000" and base.origin == c.id  # the export's Evolved-From trailer
    n2 = init_workspace(clone, "n2").repo().baseline()
    assert n2.id == "g0001" and n2.origin == c.id and ws.repo().read(n2) == repo.read(c)


def test_cli_export_and_its_errors(repo, workspace, monkeypatch):
    _, a, *_ = family(repo)
    monkeypatch.chdir(workspace.root)
    monkeypatch.setattr("evolve.cli_genome.CHAMPION_MODULE", "evolve.no_such_champion_module")
    runner = CliRunner()
    result = runner.invoke(main, ["export", a.id, "--branch", "try-a"])
    assert result.exit_code == 0, result.output
    assert git(workspace.root, "show", "try-a:train.py") + "\n" == repo.read(a)
    assert "try-a" in result.output and "LEARNING_RATE 3e-3 -> 4e-3" in result.output
    champion = runner.invoke(main, ["export", "champion", "--branch", "best"])
    assert champion.exit_code == 1 and champion.output.startswith("error: 'champion' needs")
    missing = runner.invoke(main, ["export", "g0099", "--branch", "x"])
    assert missing.exit_code == 1 and "no individual g0099" in missing.output
    assert "Traceback" not in champion.output + missing.output


def test_cli_export_champion_uses_the_engines_resolver_and_scores(repo, workspace, monkeypatch):
    _, a, b, c, _ = family(repo)
    hooks = types.ModuleType("fake_champion")
    hooks.resolve_champion = lambda root: c.id
    hooks.lineage_scores = lambda root, ids: {c.id: 0.95, "g0000": 1.0}
    monkeypatch.setitem(sys.modules, "fake_champion", hooks)
    monkeypatch.setattr("evolve.cli_genome.CHAMPION_MODULE", "fake_champion")
    result = CliRunner().invoke(main, ["export", "champion", "--branch", "best", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    message = git(workspace.root, "log", "-1", "--format=%B", "best")
    assert f"- {c.id} merge_crossover <- {a.id}+{b.id}" in message and "[val_bpb 0.950000]" in message
