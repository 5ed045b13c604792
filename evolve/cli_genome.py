"""`evolve init` and `evolve export`: make a workspace, and take an individual out of it."""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from genome import GenomeError, GenomeRepo, export, init_workspace, open_workspace, resolve_genome_id
from genome.repo import git_process
from genome.settings import STRATEGIES
from prepare.errors import PrepareError
from prepare.pipeline import find_prepared
from prepare.profiles import get_profile

from .errors import EvolveError

STATE_DB = Path(".evolve") / "evolve.db"

# The engine provides `resolve_champion(workspace_root) -> id` (and optionally
# `lineage_scores(workspace_root, ids) -> {id: val_bpb}`) in this module once it has a store.
CHAMPION_MODULE = "evolve.champion"


def _champion_hooks(root: Path) -> tuple[Callable[[], str] | None, Callable[[list[str]], dict] | None]:
    try:
        module = importlib.import_module(CHAMPION_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CHAMPION_MODULE:
            raise
        return None, None
    resolve = getattr(module, "resolve_champion", None)
    scores = getattr(module, "lineage_scores", None)
    return (
        (lambda: resolve(root)) if resolve else None,
        (lambda ids: scores(root, ids)) if scores else None,
    )


def _highest_id(directory: Path) -> int:
    """The highest id the workspace's store has recorded (-1 without a store): never handed out again."""
    db = Path(directory).expanduser().resolve() / STATE_DB
    if not db.is_file():
        return -1
    from .store import Store

    with Store(db, readonly=True) as store:
        return store.highest_id()


def _check_branch(root: Path, genome_id: str) -> None:
    """Refuse to export an individual whose branch is not the commit the store scored."""
    db = root / STATE_DB
    if not db.is_file():
        return  # git alone: nothing to compare with
    from .agreement import check_export
    from .store import Store

    with Store(db, readonly=True) as store:
        check_export(store, root, genome_id)


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--run", "run_name", help="Run name; branches are evo/<run>/<id>. Default: today, e.g. mar27.")
@click.option("--profile", help="prepare's profile (h100, tiny). Default: h100.")
@click.option("--source", help="Prepared data source. Default: the profile's.")
@click.option("--strategy", type=click.Choice(STRATEGIES), help="population (islands) or ratchet.")
@click.option("--islands", type=click.IntRange(min=1), help="Islands of the population strategy (default 4).")
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True),
    help="Training per experiment, in the profile's unit: seconds (GPU profiles) or training tokens (tiny).",
)
@click.option("--depth", type=click.IntRange(min=1), help="Model depth during the search.")
@click.option(
    "--train",
    "train_py",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Start from this train.py instead of the packaged baseline (new directories only).",
)
def init_cmd(directory, run_name, profile, source, strategy, islands, budget, depth, train_py):
    """Create a workspace in DIRECTORY: a git repository with train.py, program.md and evolve.toml.

    \b
    In a new or empty directory the first commit holds the baseline train.py (generation 0).
    In the root of an existing repository whose HEAD has a train.py, that commit is adopted as
    generation 0 (evolve.toml and program.md are committed if missing; uncommitted changes
    are refused). In an existing workspace, --run NEW starts a new run from the current commit,
    e.g. after `evolve export champion --branch main`.
    """
    try:
        ws = init_workspace(
            directory,
            run_name,
            profile=profile,
            source=source,
            strategy=strategy,
            islands=islands,
            budget=budget,
            depth=depth,
            train_py=train_py,
            reserved=_highest_id(directory),
        )
        baseline = ws.repo().baseline()
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    s = ws.settings
    click.echo(f"workspace {ws.root}")
    click.echo(
        f"  run {s.name}: profile {s.profile}, source {s.source}, {s.strategy}, depth {s.depth}, "
        f"budget {_budget_text(s.profile, s.budget)}"
    )
    click.echo(f"  generation 0: {baseline.branch} ({baseline.commit[:10]})")
    for line in next_steps(directory, s.profile, s.source):
        click.echo(line)


def _budget_text(profile: str, budget: float) -> str:
    try:
        return get_profile(profile).budget_text(budget)
    except PrepareError:  # a profile this version does not know: the number alone
        return f"{budget:g}"


def next_steps(directory: Path, profile: str, source: str) -> list[str]:
    """What a new workspace needs before its first `evolve run`: the data, then the run."""
    prepare = f"evolve prepare --profile {profile} --source {shlex.quote(source)}"
    try:
        done = find_prepared(profile, source) is not None
    except PrepareError:  # an unknown source: `evolve prepare` says why
        done = False
    lines = ["next:"]
    lines.append(f"  {prepare}" + ("   # already prepared" if done else "   # the data and tokenizer, once"))
    if str(directory) != ".":
        lines.append(f"  cd {shlex.quote(str(directory))}")
    lines.append("  evolve run      # edit program.md first: it steers the LLM mutations")
    return lines


@click.command("export")
@click.argument("genome_id", metavar="ID|champion")
@click.option("--branch", "-b", required=True, help="The branch to create (or extend, when it is --base).")
@click.option("--base", help="The branch the new commit sits on. Default: the checked-out branch, else main.")
@click.option("--run", "run_name", help="The run ID belongs to. Default: evolve.toml's run.")
@click.option(
    "--workspace",
    "-w",
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace directory.",
)
def export_cmd(genome_id, branch, base, run_name, workspace):
    """Put an individual's train.py on a plain branch: ONE new commit on top of --base.

    \b
    The commit message lists the lineage's changes from the baseline. Refuses to run while the
    checkout has uncommitted changes. `champion` is the best individual, once the run has scores.
    Examples:
      evolve export g0042 --branch try-g0042
      evolve export champion --branch main     # the champion becomes the new baseline commit
    """
    try:
        ws = open_workspace(workspace)
        repo = ws.repo() if run_name is None else GenomeRepo(ws.root, run_name, ws.settings.mutable)
        if base is None:
            head = git_process(ws.root, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.decode().strip()
            base = head or "main"
        champion, scores_hook = _champion_hooks(ws.root)
        genome_id = resolve_genome_id(genome_id, champion)
        _check_branch(ws.root, genome_id)
        scores = None
        if scores_hook is not None:
            ids = [g.id for g in repo.genomes()]
            scores = scores_hook(ids)
        result = export(repo, genome_id, branch, base=base, scores=scores)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    click.echo(f"{result.branch}: {result.commit[:10]} = {result.genome.id}'s train.py on top of {base}")
    click.echo(result.message.rstrip())
