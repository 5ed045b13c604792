"""`evolve prepare`: download (or read) the data, train the tokenizer, write the token shards."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from prepare.pipeline import find_prepared, prepare_dataset
from prepare.profiles import PROFILES, get_profile
from prepare.shards import Manifest

# What each stage counts, for the progress bar's label.
_UNITS = {"download": "files", "tokenizer": "chars"}


class _Bars:
    """Turns the pipeline's (stage, done, total) callbacks into one rich bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            unit = _UNITS.get(stage, "tokens")
            self.tasks[stage] = self.progress.add_task(stage, total=total, unit=unit)
        self.progress.update(self.tasks[stage], completed=done, total=total)


class _Count(ProgressColumn):
    """ "done / total unit", or "done unit" while the total is unknown."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if task.total is None:
            return Text(f"{task.completed:,.0f} {unit}")
        return Text(f"{task.completed:,.0f}/{task.total:,.0f} {unit}")


def _summary(manifest: Manifest, seconds: float | None) -> str:
    lines = [
        f"dataset:     {manifest.path}",
        f"source:      {manifest.source} (profile {manifest.profile}, vocab {manifest.vocab_size})",
    ]
    for split in ("train", "val"):
        lines.append(
            f"{split + ':':<12} {manifest.tokens(split):,} tokens in {manifest.documents(split):,} documents"
        )
    lines.append(f"fingerprint: {manifest.short_fingerprint}")
    if seconds is not None:
        lines.append(f"took:        {seconds:.1f} s")
    return "\n".join(lines)


@click.command("prepare")
@click.option(
    "--profile",
    default=None,
    help=f"Size of the experiments the data is for: {', '.join(sorted(PROFILES))} "
    "(default: $EVOLVE_PROFILE, else h100).",
)
@click.option(
    "--source",
    default=None,
    metavar="SOURCE",
    help="climbmix (the Hugging Face dataset autoresearch uses), builtin (Python's standard library "
    "source, offline) or local:PATH (a directory, file or glob of .txt/.md/.jsonl/.parquet). "
    "Default: the profile's.",
)
@click.option(
    "--num-shards",
    type=click.IntRange(min=1),
    default=None,
    help="Training shards to download from climbmix (default: the profile's; the validation shard is pinned).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of a summary.")
def prepare_cmd(profile: str | None, source: str | None, num_shards: int | None, as_json: bool) -> None:
    """Prepare the data every experiment trains and is scored on.

    \b
    Fetches the source (downloads are resumable and kept under $EVOLVE_HOME/raw), trains the BPE
    tokenizer on the training split, tokenizes both splits into shards under
    $EVOLVE_HOME/prepared/<profile>-<source>, and writes the manifest whose fingerprint is
    stored with every score. Running it again when everything is complete does nothing; an
    interrupted run picks up where it stopped.
    """
    prof = get_profile(profile)
    existing = find_prepared(prof, source, num_shards)
    if existing is not None:
        if as_json:
            click.echo(json.dumps({"path": str(existing.path), **existing.to_dict()}, indent=2))
        else:
            click.echo("already prepared, nothing to do")
            click.echo(_summary(existing, None))
        return
    console = Console(stderr=True)
    start = time.monotonic()
    columns = (
        TextColumn("{task.description:<15}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        manifest = prepare_dataset(prof, source, num_shards, progress=_Bars(progress))
    elapsed = time.monotonic() - start
    if as_json:
        click.echo(json.dumps({"path": str(manifest.path), **manifest.to_dict()}, indent=2))
    else:
        click.echo(_summary(manifest, elapsed))
