"""What the tests that start real searches share: the bigram train.py, the `[search]` settings of
evolve.toml, a workspace that holds them, and the environment and command line of an `evolve run`
controller started as a subprocess.

Test modules import it as `run_support` (tests/ is on sys.path through tests/conftest.py);
bench/chaos.py, which runs from a checkout, as `tests.run_support`. It is a plain module, not a
fixture, so module-scoped fixtures and the bench script can call it too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from genome.repo import MACHINE_IDENTITY, run_git
from genome.settings import SETTINGS_FILE
from genome.workspace import Workspace, init_workspace

BIGRAM = Path(__file__).resolve().parent / "evolve" / "data" / "train_bigram.py"
BOTH_OPERATORS = ("optuna_tweak", "merge_crossover")
FOUR_KNOBS = ("EMB_LR", "HEAD_LR", "INIT_STD", "BETA1")  # the bigram's knobs that matter at this size


def search_settings(
    *,
    operators: Sequence[str] = BOTH_OPERATORS,
    include: Sequence[str] = FOUR_KNOBS,
    max_changes: int = 1,
    **search: int,
) -> str:
    """The `[search]` table (its keys in the order given, then `operators`) and the Optuna tweak's
    `[operators.optuna_tweak]` table, as text to append to evolve.toml."""
    lines = ["", "[search]", *(f"{key} = {json.dumps(value)}" for key, value in search.items())]
    lines += [f"operators = {json.dumps(list(operators))}", "", "[operators.optuna_tweak]"]
    lines += [f"include = {json.dumps(list(include))}", f"max_changes = {max_changes}", ""]
    return "\n".join(lines)


def settings_workspace(
    root: Path, search: str, *, commit: bool = False, train_py: Path = BIGRAM, **init
) -> Workspace:
    """A fresh workspace (`init_workspace(root, train_py=..., **init)`) with `search` appended to its
    evolve.toml; with `commit`, the settings are committed (what `evolve run` reads from a clean checkout)."""
    ws = init_workspace(root, train_py=train_py, **init)
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write(search)
    if commit:
        run_git(ws.root, "commit", "-q", "-m", "search settings", "--", SETTINGS_FILE, env=MACHINE_IDENTITY)
    return ws


def controller_env(home: Path, data: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any EVOLVE_* setting, with its own EVOLVE_HOME, the
    prepared data at `data` (EVOLVE_DATA), one thread per training run, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env.update(EVOLVE_HOME=str(home), OMP_NUM_THREADS="1")
    if data is not None:
        env["EVOLVE_DATA"] = str(data)
    env.update(extra)
    return env


def evolve_command(*args: str) -> list[str]:
    """The installed `evolve` entry point beside this interpreter, with `args`."""
    return [str(Path(sys.executable).with_name("evolve")), *args]
