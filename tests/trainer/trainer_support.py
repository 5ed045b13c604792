"""Fixtures for trainer tests: a fresh worktree holding one purpose-built script, run for real."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import trainer

SCRIPTS = Path(__file__).parent / "scripts"


@contextmanager
def private_ray() -> Iterator[None]:
    """RAY_AUTH_MODE=disabled while a test's own Ray runtime or cluster runs: no token in ~/.ray."""
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old


def beating(folder: Path, wait: float = 1.0) -> list[str]:
    """Names of the files in `folder` that some process still touches (their mtime moves in `wait` s)."""
    import time

    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    time.sleep(wait)
    return [p.name for p in folder.iterdir() if before.get(p.name) != p.stat().st_mtime_ns]


def alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def worktree_with(tmp_path):
    """worktree_with("ok") -> a new folder whose train.py is tests/trainer/scripts/ok.py."""
    count = 0

    def make(name: str) -> Path:
        nonlocal count
        count += 1
        tree = tmp_path / f"tree{count}-{name}"
        tree.mkdir()
        shutil.copy(SCRIPTS / f"{name}.py", tree / "train.py")
        return tree

    return make


@pytest.fixture
def prepare_copy(tmp_path) -> Path:
    """A private copy of the prepare package; its parent folder goes first on the child's PYTHONPATH.

    The child imports this copy, so a test that tampers with prepare never touches the real source,
    and edits others make to the real source while a test runs are not mistaken for tampering."""
    import prepare

    root = tmp_path / "prepare-copy"
    shutil.copytree(
        Path(prepare.__file__).parent, root / "prepare", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root / "prepare"


@pytest.fixture
def run_script(worktree_with, tiny_data, tmp_path, prepare_copy):
    """run_script("ok", budget=4096) -> the RunResult of that script run by trainer.run (tiny
    profile: the budget is in training tokens unless budget_unit="seconds" is passed)."""
    count = 0

    def go(name: str, **kwargs) -> trainer.RunResult:
        nonlocal count
        count += 1
        kwargs.setdefault("depth", 2)
        kwargs.setdefault("budget", 4096)
        kwargs.setdefault("seed", 1)
        kwargs.setdefault("profile", "tiny")
        kwargs.setdefault("data_dir", tiny_data)
        kwargs.setdefault("log_dir", tmp_path / f"logs{count}-{name}")
        kwargs.setdefault("allowance", 30.0)
        kwargs["extra_env"] = {"PYTHONPATH": str(prepare_copy.parent), **kwargs.get("extra_env", {})}
        return trainer.run(worktree_with(name), **kwargs)

    return go
