"""`evolve demo`: a complete small evolution, offline, on CPU, in a few minutes.

It prepares the tiny profile from the builtin text, creates a workspace whose train.py is the
baseline with its learning rates set ten times too low (so there is something to find in a few
seconds of training per child), and evolves it on 2 islands with the Optuna tweak and the merge
crossover. The Optuna tweak is pointed at knobs that matter on the CPU path ([operators.optuna_tweak]
in the workspace's evolve.toml shows how to steer it). Running it again on the same --dir resumes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from genome.errors import GenomeError
from genome.hyperparams import parse_hyperparams, rewrite_hyperparams
from genome.repo import run_git
from genome.settings import SETTINGS_FILE
from genome.workspace import baseline_train_py, init_workspace, open_workspace
from prepare.pipeline import prepare_dataset
from prepare.profiles import get_profile

from .errors import EvolveError
from .scheduler import StopConditions

RUN = "demo"
# Learning rates of the baseline, divided by this in the demo's generation 0.
DETUNE = 10.0
DETUNED = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")
# Knobs the tiny CPU path uses (the GPU batch sizes and torch.compile do nothing there).
CPU_KNOBS = (*DETUNED, "WARMDOWN_FRAC", "WEIGHT_DECAY", "LOGIT_SOFTCAP", "X0_INIT", "MUON_MOMENTUM")
OPERATOR_TABLE = f"""
# Written by `evolve demo`: fewer seeds and faster migration than the defaults, for a short run.
[search]
baseline_seeds = {{seeds}}
max_seeds = 3
confirm_seeds = 1
migrate_every = 4
operators = ["optuna_tweak", "merge_crossover"]

# The Optuna tweak changes one of these knobs per child.
[operators.optuna_tweak]
include = [{", ".join(f'"{k}"' for k in CPU_KNOBS)}]
max_changes = 1
startup_trials = 4
"""


def detuned_train_py(dest: Path) -> Path:
    """The baseline train.py with its learning rates divided by DETUNE."""
    source = baseline_train_py().read_text()
    knobs = parse_hyperparams(source)
    values = {k: float(f"{knobs[k].value / DETUNE:.4g}") for k in DETUNED if k in knobs}
    dest.write_text(rewrite_hyperparams(source, values))
    return dest


def make_workspace(directory: Path, budget: float | None, baseline_seeds: int = 4):
    """A new demo workspace in `directory`, or the existing one (to resume)."""
    if (directory / SETTINGS_FILE).is_file():
        return open_workspace(directory)
    if directory.exists() and any(directory.iterdir()):
        raise EvolveError(f"{directory} exists and is not a demo workspace; pass --dir NEW or remove it")
    with tempfile.TemporaryDirectory(prefix="evolve-demo-") as tmp:
        train = detuned_train_py(Path(tmp) / "train.py")
        ws = init_workspace(
            directory, RUN, profile="tiny", source="builtin", islands=2, budget=budget, train_py=train
        )
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write(OPERATOR_TABLE.replace("{seeds}", str(baseline_seeds)))
    run_git(ws.root, "commit", "-q", "-m", "demo: point the Optuna tweak at the CPU knobs", "--", SETTINGS_FILE,
            env={"GIT_AUTHOR_NAME": "autoevolve", "GIT_AUTHOR_EMAIL": "autoevolve@localhost",
                 "GIT_COMMITTER_NAME": "autoevolve", "GIT_COMMITTER_EMAIL": "autoevolve@localhost"})  # fmt: skip
    return open_workspace(directory)


def run_demo(
    directory: Path,
    *,
    children: int = 12,
    budget: float | None = None,
    gpus: str = "cpu:2",
    baseline_seeds: int = 4,
    interval: float = 15.0,
    console: Console | None = None,
) -> None:
    from .champion import choose_champion
    from .cli_run import _leaderboard, parse_gpus, run_engine
    from .engine import EngineConfig

    console = console or Console()
    started = time.time()
    directory = Path(directory).expanduser().resolve()
    console.print("[bold]1/3[/bold] preparing the tiny dataset (builtin text, offline)")
    prepare_dataset(get_profile("tiny"), source="builtin")
    devices = parse_gpus(gpus, "tiny")
    if devices[0] == "cpu":
        # Several CPU runs side by side: one thread each, or they fight over the cores.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(devices))))
    try:
        ws = make_workspace(directory, budget, baseline_seeds)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    console.print(
        f"[bold]2/3[/bold] workspace {ws.root} (run {ws.run!r}, learning rates {DETUNE:g}x too low)"
    )
    config = EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=children))
    console.print(
        f"[bold]3/3[/bold] evolving {children} children on {len(devices)} x {devices[0]} "
        f"({ws.settings.budget:,.0f} training tokens each)"
    )
    reason, engine = run_engine(ws, config, devices, console, interval=interval)
    console.print(_leaderboard(engine.store, engine.run_name, config.depth, 8))
    stats = engine.store.operator_stats(engine.run_name)
    for name, s in sorted(stats.items()):
        console.print(
            f"  {name}: {s['children']} children, {s['improvements']} beat their parent", highlight=False
        )
    champ = choose_champion(engine.store, engine.run_name, config.depth)
    best = champ.id if champ is not None else "g0000"
    engine.close()
    console.print(f"\n{reason.value} in {time.time() - started:.0f} s. Next, try:", highlight=False)
    for line in (
        f"cd {ws.root}",
        "evolve status                      # the run on one screen",
        "evolve top 5                       # the leaderboard",
        f"evolve show {best}                  # its diff against its parent, its scores, its log",
        f"evolve lineage {best}               # its ancestors",
        f"evolve export {best} --branch best  # its train.py on a plain branch",
        "evolve report                      # plots, the family tree and the leaderboard as one HTML page",
        f"evolve run --gpus {gpus} --max-experiments {children + 12}   # evolve further (resumes)",
    ):
        console.print("  " + line, highlight=False, markup=False)
