"""bootstrap.sh's skip logic, cheaply: a copy of it beside a copy of pyproject.toml, a venv without
pip, and a no-op installer (AUTOEVOLVE_PIP=true), so no torch is downloaded. `--check` prints the
steps a run would take; a real run of the copy writes the stamp that makes the next one skip pip.
The real installs run in CI, where .ci/run is `./bootstrap.sh test`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("bootstrap.sh", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    return root


def bootstrap(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOEVOLVE_")}
    base.update(PYTHON=sys.executable, **env)
    return subprocess.run(
        ["bash", str(root / "bootstrap.sh"), *args], cwd=root, env=base, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def steps(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_check_on_a_fresh_clone_lists_every_step_and_takes_none(checkout):
    planned = steps(bootstrap(checkout, "--check", "test", "--", "tests/prepare", "-x"))
    venv = checkout / ".venv"
    assert planned[0] == f'{sys.executable} -m venv "{venv}"'
    assert f'"{venv}/bin/python" -m pip install -q --upgrade pip' in planned
    assert f'"{venv}/bin/python" -m pip install torch==2.13.0' in planned  # the README's pin
    assert f"\"{venv}/bin/python\" -m pip install -e '.[dev,ray,web]'" in planned
    assert planned[-1] == f"{venv}/bin/python -m pytest -q -n 2 --dist loadfile tests/prepare -x"
    assert not venv.exists()
    demo = steps(bootstrap(checkout, "--check", "demo"))
    assert f"\"{venv}/bin/python\" -m pip install -e '.'" in demo  # the demo needs no extras
    assert demo[-1] == f"{venv}/bin/evolve demo --dir {os.environ.get('TMPDIR', '/tmp')}/evolve-demo"


def test_a_second_run_skips_pip_until_pyproject_or_the_torch_requirement_changes(checkout):
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    noop = {"AUTOEVOLVE_PIP": "true"}
    first = steps(bootstrap(checkout, "setup", **noop))
    assert "true install torch==2.13.0" in first and (venv / ".autoevolve-bootstrap").is_file()

    again = bootstrap(checkout, "--check", "setup", **noop)
    assert "packages: installed for this pyproject.toml" in again.stdout
    assert not [s for s in steps(again) if " install " in s and "apt-get" not in s]
    assert "-m venv" not in again.stdout and "virtual environment" in again.stdout
    demo = steps(bootstrap(checkout, "--check", "demo", **noop))  # the tests' extras cover the demo
    assert not [s for s in demo if " install " in s and "apt-get" not in s]

    cuda = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    asked = steps(bootstrap(checkout, "--check", "setup", AUTOEVOLVE_TORCH=cuda, **noop))
    assert f"true install {cuda}" in asked

    with open(checkout / "pyproject.toml", "a") as f:
        f.write("\n# a new dependency\n")
    changed = steps(bootstrap(checkout, "--check", "setup", **noop))
    assert "true install -e '.[dev,ray,web]'" in changed and "true install torch==2.13.0" in changed


def test_an_existing_folder_that_is_not_a_venv_is_left_alone(checkout):
    (checkout / ".venv").mkdir()
    (checkout / ".venv" / "mine.txt").write_text("keep me")
    result = bootstrap(checkout, "setup", AUTOEVOLVE_PIP="true")
    assert result.returncode == 1 and "is not a virtual environment; it is left as it is" in result.stderr
    assert (checkout / ".venv" / "mine.txt").read_text() == "keep me"


def test_an_unknown_command_prints_the_usage():
    result = subprocess.run(["bash", str(REPO / "bootstrap.sh"), "bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "./bootstrap.sh test [ARGS]" in result.stderr


def test_ci_runs_the_readmes_test_command_exactly():
    readme = (REPO / "README.md").read_text()
    command = next(
        line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("./bootstrap.sh test")
    )
    ci = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert command == "./bootstrap.sh test" and ci[-1] == command
    assert ci[-2].startswith("cd ")  # from the repo root, as the README's reader is
