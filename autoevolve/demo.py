"""`evolve demo`: a whole small evolution, offline, on CPU, in a few minutes, that shows it working.

It prepares the tiny profile from the builtin text and creates a workspace whose train.py is the
baseline with its learning rates set ten times too low, so that there is something to find in
a few seconds of training. Then, in five steps: evolve it on 2 islands with the Optuna tweak
(pointed at the two learning rates that matter most at this size, one per child) and the merge
crossover (a child that takes two accepted children's changes is a real merge commit); validate
the champion and the baseline at depth 3; write the HTML report; and say in two lines what
improved and by how much.

Budgets are training tokens (the tiny profile's unit), so the scores depend on the code and the
seed, not on how busy the machine is: on a 2-core machine with both cores taken by other work,
the runs take longer and the outcome is the same. Running it again on the same --dir resumes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from evolve.champion import baseline_of, choose_champion
from evolve.cli_common import leaderboard, make_console, parse_gpus
from evolve.cli_run import run_engine
from evolve.cli_validate import progress_line, transfer_table
from evolve.engine import EngineConfig
from evolve.errors import EvolveError
from evolve.scheduler import StopConditions
from evolve.store import Store
from evolve.validate import ValidationSpec, validate
from genome.errors import GenomeError
from genome.hyperparams import parse_hyperparams, rewrite_hyperparams
from genome.repo import run_git
from genome.settings import SETTINGS_FILE
from genome.workspace import Workspace, baseline_train_py, init_workspace, open_workspace
from prepare.pipeline import prepare_dataset
from prepare.profiles import get_profile

RUN = "demo"
# Learning rates of the baseline, divided by this in the demo's generation 0.
DETUNE = 10.0
DETUNED = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")
STEPS = 5
# The knobs the Optuna tweak changes: the two learning rates that matter most at this size (tripled,
# in 16 steps at depth 2, seed 42: UNEMBEDDING_LR -0.39 bpb, EMBEDDING_LR -0.05, MATRIX_LR -0.03).
TUNED = ("UNEMBEDDING_LR", "EMBEDDING_LR")
VALIDATE_DEPTH = 3  # deeper than the search's 2, and still quick on a CPU
CHILDREN = 8
BUDGET = 32768  # training tokens per run: half the tiny profile's, 8 steps (under 5 minutes, cores busy)
# The search's seed: each proposal's draws follow from it, so a demo run tells the same story each
# time. This one's first children raise both learning rates (x3.6 and x2.5: one improves, the
# other improves more, and a merge of the two can take both); every score is a real run.
SEARCH_SEED = 173
OPERATOR_TABLE = f"""
# Written by `evolve demo`: fewer seeds and faster migration than the defaults, for a short run.
[search]
seed = {SEARCH_SEED}
baseline_seeds = {{seeds}}
max_seeds = 2
confirm_seeds = 1
migrate_every = 3
operators = ["optuna_tweak", "merge_crossover"]

# The Optuna tweak changes one of these learning rates per child (the demo detuned them); the
# merge crossover then takes two accepted children's changes at once, as a merge commit.
[operators.optuna_tweak]
include = [{", ".join(f'"{k}"' for k in TUNED)}]
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
    run_git(ws.root, "commit", "-q", "-m", "demo: the search settings (the Optuna tweak on two learning rates, the merge crossover)", "--", SETTINGS_FILE,
            env={"GIT_AUTHOR_NAME": "autoevolve", "GIT_AUTHOR_EMAIL": "autoevolve@localhost",
                 "GIT_COMMITTER_NAME": "autoevolve", "GIT_COMMITTER_EMAIL": "autoevolve@localhost"})  # fmt: skip
    return open_workspace(directory)


def run_demo(
    directory: Path,
    *,
    children: int = CHILDREN,
    budget: float | None = None,
    gpus: str = "cpu:2",
    baseline_seeds: int = 4,
    validate_depth: int | None = None,
    interval: float = 15.0,
    console: Console | None = None,
) -> None:
    from analysis.report import write_report  # here, not above: it loads matplotlib (`evolve --help`)

    console = console or Console()
    started = time.time()
    directory = Path(directory).expanduser().resolve()
    profile = get_profile("tiny")
    depth_v = validate_depth or VALIDATE_DEPTH
    step = _Steps(console)
    step("preparing the tiny dataset (builtin text, offline)")
    prepare_dataset(profile, source="builtin")
    devices = parse_gpus(gpus, "tiny")
    if devices[0] == "cpu":
        # Several CPU runs side by side: one thread each, or they fight over the cores.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(devices))))
    try:
        ws = make_workspace(directory, budget or BUDGET, baseline_seeds)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    step(f"workspace {ws.root} (run {ws.run!r}, learning rates {DETUNE:g}x too low)")
    config = EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=children))
    step(
        f"evolving {children} children on {len(devices)} x {devices[0]} "
        f"({ws.settings.budget:,.0f} training tokens each)"
    )
    reason, engine = run_engine(ws, config, devices, console, interval=interval)
    store, run = engine.store, engine.run_name
    console.print(leaderboard(store, run, config.depth, 8))
    for name, s in sorted(store.operator_stats(run).items()):
        console.print(
            f"  {name}: {s['children']} children, {s['improvements']} beat their parent", highlight=False
        )
    champ = choose_champion(store, run, config.depth)
    engine.close()
    transfer = None
    if champ is None or champ.id == _baseline(ws):
        step("validation skipped: no child beat the baseline, so there is nothing to check deeper")
    else:
        step(f"validating the champion {champ.id} and the baseline at depth {depth_v} (2 seeds each)")
        spec = ValidationSpec(depth=depth_v, top=1, seeds=2, budget=ws.settings.budget, ids=(champ.id,))

        def progress(kind: str, payload: dict) -> None:
            line = progress_line(kind, payload)
            if line is not None:
                console.print(line, highlight=False, markup=False)

        transfer = validate(ws, spec, devices, on_event=progress).report
        if transfer is not None:
            console.print(transfer_table(transfer))
    report = write_report(ws.root, run=ws.run)
    step(f"report written: {report}")
    console.print(f"\n{reason.value} in {time.time() - started:.0f} s.", highlight=False)
    for line in outcome(ws, config.depth, transfer):
        console.print(line, highlight=False, markup=False, soft_wrap=True)  # one line each, unwrapped
    best = champ.id if champ is not None else _baseline(ws)
    console.print("Next, try:", highlight=False)
    for line in (
        f"cd {ws.root}",
        "evolve status                      # the run on one screen",
        "evolve top 5                       # the leaderboard",
        f"evolve show {best}                  # its diff against its parent, its scores, its log",
        f"evolve lineage {best}               # its ancestors",
        f"evolve export {best} --branch best  # its train.py on a plain branch",
        "git log --graph --oneline --all    # the family tree (a crossover is a merge commit)",
        f"evolve run --gpus {gpus} --max-experiments {children + 12}   # evolve further (resumes)",
    ):
        console.print("  " + line, highlight=False, markup=False)


class _Steps:
    """Prints "3/5 what is being done" lines."""

    def __init__(self, console: Console) -> None:
        self.console, self.n = console, 0

    def __call__(self, text: str) -> None:
        self.n += 1
        self.console.print(f"[bold]{self.n}/{STEPS}[/bold] {text}")


def _baseline(ws: Workspace) -> str:
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        base = baseline_of(store, ws.run)
    return base.id if base is not None else "g0000"


def outcome(ws: Workspace, depth: int, transfer: Any) -> list[str]:
    """The demo's result in two lines: what improved at the search depth and by how much, and
    whether it held at the validation depth."""
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        base = baseline_of(store, ws.run)
        champ = choose_champion(store, ws.run, depth)
        scores = store.scores(depth, ws.run)
        kids = [i for i in store.individuals(ws.run) if i.parents]
        accepted = [i for i in kids if i.decision == "accept"]
        merges = [i for i in kids if len(i.parents) > 1]
        kept_merges = [i for i in merges if i.decision == "accept"]
        champion = store.get(champ.id) if champ is not None else None
    base_score = scores.get(base.id) if base is not None else None
    if champion is None or base is None or champion.id == base.id or base_score is None:
        return [
            f"No child beat the baseline in {len(kids)} children ({len(merges)} merge commits);",
            "run `evolve demo` again on the same --dir with a larger --children to go on.",
        ]
    mean = champ.search_mean if champ.search_mean is not None else scores[champion.id].mean
    gain = base_score.mean - mean
    first = (
        f"Improved: {champion.id} ({champion.description}, by {champion.operator}) {mean:.4f} bpb at depth "
        f"{depth} against the baseline's {base_score.mean:.4f}: {gain:+.4f} better "
        f"({100 * gain / base_score.mean:.1f}%); {len(accepted)} of {len(kids)} children accepted, "
        f"{len(kept_merges)} of {len(merges)} merges."
    )
    row = next((r for r in transfer.rows if r.individual == champion.id), None) if transfer else None
    if transfer is None or row is None or row.validation is None or transfer.baseline_validation is None:
        where = f"depth {transfer.validation_depth}" if transfer else "a larger depth"
        second = f"At {where}: no verdict ({row.reason if row else 'not validated'})."
    else:
        floor = (
            f"{transfer.validation_floor:.4f}" if transfer.validation_floor is not None else "not measured"
        )
        second = (
            f"At depth {transfer.validation_depth} it {row.verdict.value}: {row.validation.mean:.4f} against "
            f"the baseline's {transfer.baseline_validation.mean:.4f} ({-row.validation_delta:+.4f}, noise floor {floor})."
        )
    return [first, second]


@click.command("demo")
@click.option("--dir", "directory", default="autoevolve-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where to create the demo workspace.")  # fmt: skip
@click.option(
    "--children", default=8, show_default=True, type=click.IntRange(min=1), help="Children to train."
)
@click.option(
    "--budget",
    type=click.FloatRange(min=1),
    help="Training tokens per run (default 32,768: 8 steps, half the tiny profile's budget).",
)
@click.option("--gpus", "devices", default="cpu:2", show_default=True, help="Devices, as for `evolve run`.")
@click.option(
    "--baseline-seeds",
    default=4,
    show_default=True,
    type=click.IntRange(min=2),
    help="Seeds of the baseline: the first noise model (fewer leave the judge too unsure to accept).",
)
@click.option(
    "--validate-depth",
    type=click.IntRange(min=3),
    help="Depth the champion and the baseline are validated at (default 3; the search trains at 2).",
)
@click.option(
    "--interval", default=15.0, show_default=True, help="Seconds between summary lines without a terminal."
)
def demo_cmd(directory, children, budget, devices, baseline_seeds, validate_depth, interval):
    """A small evolution, offline on CPU, in a few minutes: the first thing to try.

    Prepares the tiny profile from the builtin text, creates a workspace in --dir whose train.py
    has its learning rates ten times too low, evolves it (--children children on 2 islands, the
    Optuna tweak on two learning rates and the merge crossover), validates the champion and the
    baseline at depth 3, writes the HTML report, and says in two lines what improved and by how
    much. Budgets are training tokens, so a busy machine makes it slower, not different.
    """
    run_demo(directory, children=children, budget=budget, gpus=devices, baseline_seeds=baseline_seeds,
             validate_depth=validate_depth, interval=interval, console=make_console())  # fmt: skip
