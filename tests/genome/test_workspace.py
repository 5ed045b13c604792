"""`evolve init`: new workspaces, adopting an existing repository, refusals, evolve.toml and program.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from genome_support import FIXTURE_TRAIN, git, trailers_by_git

from evolve.cli import main
from genome import GenomeError, init_workspace, load_settings, open_workspace
from genome.settings import Settings, rename_run, to_toml

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_new_workspace_holds_train_py_program_md_and_settings(tmp_path):
    ws = init_workspace(tmp_path / "runs" / "exp1", "exp1", profile="tiny", train_py=FIXTURE_TRAIN)
    root = ws.root
    assert git(root, "ls-tree", "--name-only", "HEAD").split() == [
        ".gitignore",
        "evolve.toml",
        "program.md",
        "train.py",
    ]
    assert git(root, "rev-list", "--count", "HEAD") == "1"
    assert git(root, "symbolic-ref", "--short", "HEAD") == "main"
    assert (root / "train.py").read_text() == FIXTURE_TRAIN.read_text()
    assert (root / "program.md").read_text() == (REPO_ROOT / "program.md").read_text()
    assert ".evolve/" in (root / ".gitignore").read_text().split()
    assert (root / ".evolve").is_dir() and git(root, "status", "--porcelain") == ""
    settings = load_settings(root / "evolve.toml")
    assert (settings.name, settings.profile, settings.budget, settings.depth) == ("exp1", "tiny", 65536.0, 2)
    assert settings.mutable == ("train.py",) and settings.llm["api_key_env"] == "OPENAI_API_KEY"
    base = ws.repo().baseline()
    assert base.commit == git(root, "rev-parse", "HEAD")  # the first commit is generation 0
    assert trailers_by_git(root, "HEAD")["Evolve-Operator"] == "baseline"


def test_the_default_start_is_the_packaged_baseline(tmp_path):
    from genome.baseline import BASELINE

    ws = init_workspace(tmp_path / "ws")
    assert (ws.root / "train.py").read_text() == BASELINE.read_text()
    assert ws.settings.profile == "h100" and ws.settings.depth == 12 and ws.settings.budget == 300.0


def test_program_md_ships_as_package_data_through_a_relative_symlink():
    link = REPO_ROOT / "genome" / "baseline" / "program.md"
    assert link.is_symlink() and os.readlink(link) == "../../program.md"
    text = link.read_text()
    for must in ("val_bpb", "SEARCH", "REPLACE", "DESCRIPTION:", "RATIONALE:", "run_config", "Simplicity"):
        assert must in text


def test_init_refuses_non_empty_directories_and_existing_workspaces(tmp_path, workspace):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "data.csv").write_text("x\n")
    with pytest.raises(GenomeError, match="exists and is not empty"):
        init_workspace(tmp_path / "full", train_py=FIXTURE_TRAIN)
    assert not (tmp_path / "full" / ".git").exists()
    with pytest.raises(GenomeError, match="already a workspace .*--run NEWNAME"):
        init_workspace(workspace.root)
    with pytest.raises(GenomeError, match="run 't1' already exists"):
        init_workspace(workspace.root, "t1")


def test_adopting_an_existing_repository_commits_only_what_is_missing(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "trunk")
    (root / "train.py").write_text(FIXTURE_TRAIN.read_text())
    (root / "README.md").write_text("my project\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "my own train.py")
    first = git(root, "rev-parse", "HEAD")
    ws = init_workspace(root, "adopted", profile="tiny")
    assert git(root, "rev-parse", "HEAD~1") == first  # one commit on top, on the user's branch
    assert git(root, "symbolic-ref", "--short", "HEAD") == "trunk"
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").split()) == [
        ".gitignore",
        "evolve.toml",
        "program.md",
    ]
    base = ws.repo().baseline()
    assert base.commit == git(root, "rev-parse", "HEAD")
    assert ws.repo().read(base) == FIXTURE_TRAIN.read_text()
    assert git(root, "status", "--porcelain") == ""


def test_adopting_refuses_dirty_trees_and_repositories_without_train_py(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    with pytest.raises(GenomeError, match="no commits yet"):
        init_workspace(root)
    (root / "README.md").write_text("x\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "readme")
    with pytest.raises(GenomeError, match="has no train.py; add your train.py"):
        init_workspace(root)
    (root / "train.py").write_text("print(1)\n")
    with pytest.raises(GenomeError, match="has no train.py; commit it first"):
        init_workspace(root)
    git(root, "add", "train.py")
    git(root, "commit", "-q", "-m", "train")
    (root / "train.py").write_text("print(2)\n")
    with pytest.raises(GenomeError, match=r"uncommitted changes \(train.py\)"):
        init_workspace(root)
    assert not (root / "evolve.toml").exists()
    assert git(root, "branch", "--list", "evo/*") == ""


def test_a_new_run_in_an_existing_workspace_starts_from_the_current_commit(workspace):
    root = workspace.root
    ws2 = init_workspace(root, "t2")
    assert ws2.settings.name == "t2" and load_settings(root / "evolve.toml").name == "t2"
    assert "# branches are evo/<name>/<id>" in (root / "evolve.toml").read_text()  # comments kept
    assert ws2.repo().baseline().commit == git(root, "rev-parse", "HEAD")
    assert workspace.repo().baseline().commit == git(root, "rev-parse", "HEAD~1")
    assert open_workspace(root / ".evolve").run == "t2"  # found from a subdirectory


def test_settings_round_trip_and_validation(tmp_path):
    s = Settings(name="r", profile="tiny", strategy="ratchet", islands=1, mutable=("train.py", "model.py"))
    path = tmp_path / "evolve.toml"
    path.write_text(to_toml(s))
    assert load_settings(path) == s
    path.write_text(rename_run(to_toml(s), "r2"))
    assert load_settings(path).name == "r2"
    for bad, message in (
        ('[run]\nname = "r"\nislands = 0\n', "islands must be an integer >= 1"),
        ('[run]\nname = "r"\nstrategy = "greedy"\n', "strategy must be one of"),
        ('[run]\nname = "r"\nprofile = "a100"\n', "unknown profile"),
        ('[run]\nname = "r"\ncolour = "red"\n', "unknown key"),
        ("[run\n", "not valid TOML"),
    ):
        path.write_text(bad)
        with pytest.raises(GenomeError, match=message):
            load_settings(path)


def test_cli_init_creates_a_workspace_and_reports_errors_in_one_line(tmp_path):
    runner = CliRunner()
    target = tmp_path / "cli-ws"
    result = runner.invoke(
        main, ["init", str(target), "--run", "c1", "--profile", "tiny", "--train", str(FIXTURE_TRAIN)]
    )
    assert result.exit_code == 0, result.output
    assert "evo/c1/g0000" in result.output
    assert "budget 65,536 training tokens" in result.output  # tiny counts tokens, not seconds
    assert load_settings(target / "evolve.toml").name == "c1"
    # it ends with what to run next, in order: the workspace's own data, then the run
    steps = result.output.split("next:\n", 1)[1].splitlines()
    assert steps[0].split("#")[0].strip() == "evolve prepare --profile tiny --source builtin"
    assert "already prepared" not in steps[0]  # this EVOLVE_HOME is empty
    assert steps[1].strip() == f"cd {target}" and steps[2].split("#")[0].strip() == "evolve run"
    again = runner.invoke(main, ["init", str(target)])
    assert again.exit_code == 1
    assert again.output.startswith("error: ") and "already a workspace" in again.output
    assert len(again.output.strip().splitlines()) == 1 and "Traceback" not in again.output
