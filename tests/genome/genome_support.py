"""Fixtures for the genome tests: a small train.py, real workspaces in tmp_path, a git helper,
and a check after every test that each evo/ branch tip carries the three trailers (read by git
itself) and that every crossover is a merge commit with two parents."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from genome import GenomeRepo, Workspace, init_workspace

HERE = Path(__file__).parent
FIXTURE_TRAIN = HERE / "llm_responses" / "train.py"
USER = {
    "GIT_AUTHOR_NAME": "Ada User",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada User",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}


def git(cwd: Path, *args: str) -> str:
    """Run git as the user would (their identity), returning stdout."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **USER}, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def trailers_by_git(cwd: Path, rev: str) -> dict[str, str]:
    """The trailers of a commit as git's own trailer parser sees them."""
    out = git(cwd, "log", "-1", "--format=%(trailers:only,unfold)", rev)
    return dict(
        line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in out.splitlines() if line
    )


def assert_evo_branches_sound(root: Path) -> None:
    refs = git(root, "for-each-ref", "--format=%(refname:short)", "refs/heads/evo/").splitlines()
    for ref in refs:
        trailers = trailers_by_git(root, ref)
        for key in ("Evolve-Id", "Evolve-Operator", "Evolve-Parents"):
            assert key in trailers, f"{root}: {ref} lacks {key}: {trailers}"
        assert ref.rsplit("/", 1)[-1] == trailers["Evolve-Id"]
        commit_parents = git(root, "rev-list", "--parents", "-n", "1", ref).split()[1:]
        if "crossover" in trailers["Evolve-Operator"]:
            assert len(commit_parents) == 2, f"{ref} is a crossover without two parents"
            assert len(trailers["Evolve-Parents"].split(",")) == 2


@pytest.fixture(autouse=True)
def _evo_branches_sound(tmp_path):
    yield
    for dirpath, dirnames, _ in os.walk(tmp_path):
        if ".git" in dirnames and Path(dirpath, ".git").is_dir():
            assert_evo_branches_sound(Path(dirpath))
        dirnames[:] = [d for d in dirnames if d not in (".git", ".evolve", "evolve-home")]


@pytest.fixture
def fixture_source() -> str:
    return FIXTURE_TRAIN.read_text()


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """A fresh workspace (run `t1`, tiny profile) whose generation 0 is the fixture train.py."""
    return init_workspace(tmp_path / "ws", "t1", profile="tiny", train_py=FIXTURE_TRAIN)


@pytest.fixture
def repo(workspace) -> GenomeRepo:
    return workspace.repo()
