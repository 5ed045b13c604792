"""`evolve validate`: do the search's winners still win at depth 24? Runs them there and shows the verdicts."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from genome import GenomeError
from prepare.profiles import budget_text, get_profile

from .champion import Champion, TransferReport, choose_champion, transfer_report, validated_depths
from .cli_common import make_console, parse_gpus, workspace_at
from .errors import EvolveError
from .promotion import Score
from .store import Store
from .validate import ValidationSpec, validate

_COLOURS = {"transfers": "green", "does not transfer": "red", "inconclusive": "yellow"}


def _score(score: Score | None) -> str:
    return "-" if score is None else f"{score.mean:.6f} ±{score.std:.4f} n={score.n}"


def _gain(delta: float | None, floor: float | None) -> str:
    if delta is None:
        return "-"
    text = f"{-delta:+.6f}"
    return text + (f" ({-delta / floor:+.1f} floors)" if floor else "")


def transfer_table(report: TransferReport, champion: Champion | None = None) -> Table:
    """The verdicts as a rich table: one line per validated individual, best at depth first."""
    title = (
        f"transfer of run {report.run}: depth {report.search_depth} -> {report.validation_depth}"
        + (f", {budget_text(report.budget, report.budget_unit)} per run" if report.budget else "")
        + " (gain = baseline - val_bpb, higher is better)"
    )
    table = Table(title=title)
    for col in ("id", f"val_bpb @{report.search_depth}", "gain", f"val_bpb @{report.validation_depth}", "gain",
                "verdict"):  # fmt: skip
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    table.add_row(
        f"{report.baseline} (baseline)",
        _score(report.baseline_search),
        "-",
        _score(report.baseline_validation),
        "-",
        "",
        "",
    )
    for r in report.rows:
        colour = _COLOURS[r.verdict.value]
        mark = " *" if champion is not None and champion.id == r.individual else ""
        table.add_row(
            r.individual + mark,
            _score(r.search),
            _gain(r.search_delta, report.search_floor),
            _score(r.validation),
            _gain(r.validation_delta, report.validation_floor),
            f"[{colour}]{r.verdict.value}[/{colour}]",
            r.description,
        )
    return table


def transfer_summary(report: TransferReport, champion: Champion | None = None) -> list[str]:
    """The lines under the table: noise floors, the rank correlation, the champion."""
    lines = [
        f"noise floor {_num(report.search_floor)} at depth {report.search_depth}, "
        f"{_num(report.validation_floor)} at depth {report.validation_depth}; "
        f"Spearman rank correlation {_num(report.spearman, 3)} over {len(report.rows)}"
    ]
    if champion is not None:
        lines.append(f"champion: {champion.label()}")
    return lines


def latest_transfer(
    store: Store, run: str, search_depth: int
) -> tuple[TransferReport, Champion | None] | None:
    """The verdicts at the deepest validated depth and the champion, for `evolve status`; None before any."""
    depths = [d for d in validated_depths(store, run) if d != search_depth]
    if not depths:
        return None
    report = transfer_report(store, run, search_depth, depths[-1])
    return None if report is None else (report, choose_champion(store, run, search_depth))


def progress_line(kind: str, payload: dict) -> str | None:
    """One line of `validate`'s progress (its `on_event`), or None for events that say nothing new."""
    if kind == "validation_start":
        return (
            f"validating {', '.join(payload['individuals'])} at depth {payload['depth']}: "
            f"{payload['runs']} runs to do, {payload['skipped']} already done"
        )
    if kind == "validated":
        score = f"val_bpb {payload['val_bpb']:.6f}" if payload["val_bpb"] is not None else payload["reason"]
        return (
            f"  {payload['id']} seed {payload['seed']}: {payload['status']} {score} "
            f"({payload['wall']:.0f} s on {payload['device']})"
        )
    return None


def _num(value: float | None, digits: int = 6) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@click.command("validate")
@click.option(
    "--workspace",
    "-w",
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace directory (default: the current one, or the nearest above it).",
)
@click.option(
    "--depth", type=click.IntRange(min=1), help="Validation depth (default: the profile's, 24 for h100)."
)
@click.option("--top", type=click.IntRange(min=1), help="Elites to validate (default 5).")
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True),
    help="Training per run, in the profile's unit: seconds or training tokens (default: the profile's budget).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    help="Runs per individual, baseline included (default 3; they set the noise floor at that depth).",
)
@click.option("--gpus", help="Devices: all (default on GPU profiles), a list like 0,1, or cpu[:N].")
@click.option(
    "--gpus-per-run",
    type=click.IntRange(min=1),
    help="Devices per run, through torchrun when > 1 (default 1).",
)
@click.option(
    "--pending",
    is_flag=True,
    help="Also take children the search is still re-evaluating (ranked by the seeds they have so far).",
)
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="Validate this individual instead of the top ones, whatever the search decided (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress goes to stderr).")
def validate_cmd(workspace, depth, top, budget, seeds, gpus, gpus_per_run, pending, ids, as_json):
    """Re-run the top elites and the baseline at a deeper depth; say which improvements transfer.

    \b
    Each of the --top best individuals at the search depth, and the baseline, is trained --seeds
    times at --depth (same profile and data as the search), and stored as `validation` runs. An
    improvement over the baseline at --depth of more than 2 noise floors (the seed-to-seed spread
    there) transfers; none at all does not transfer; anything between is inconclusive. The
    champion (`evolve export champion`) is the best individual that transfers. Runs already in
    the store are not repeated: run it again after a Ctrl-C, or with a larger --top or --seeds.
    Safe next to a running `evolve run`: give it other devices with --gpus. Defaults come from
    evolve.toml's optional [validate] table (depth, top, seeds, budget, gpus_per_run), which
    `evolve run --validate-every HOURS` uses too.
    Examples:
      evolve validate --depth 24 --top 5
      evolve validate --depth 24 --top 3 --gpus 6,7 --gpus-per-run 2
    """
    ws = workspace_at(workspace)
    try:
        spec = ValidationSpec.from_workspace(
            ws,
            depth=depth,
            top=top,
            seeds=seeds,
            budget=budget,
            gpus_per_run=gpus_per_run,
            pending=pending or None,
            ids=tuple(ids) or None,
        )
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    profile = get_profile(ws.settings.profile)
    devices = parse_gpus(gpus, profile.name)

    def progress(kind: str, payload: dict) -> None:
        line = progress_line(kind, payload)
        if line is not None:
            click.echo(line, err=as_json)

    try:
        result = validate(ws, spec, devices, on_event=progress)
    except KeyboardInterrupt:
        click.echo("interrupted: runs in flight were stopped; the same command resumes", err=True)
        sys.exit(130)
    if as_json:
        data = {
            "candidates": list(result.candidates),
            "ran": result.ran,
            "skipped": result.skipped,
            "failed": result.failed,
            "stopped": result.stopped,
            "transfer": result.report.to_json() if result.report else None,
            "champion": asdict(result.champion) if result.champion else None,
        }
        click.echo(json.dumps(data, indent=2))
        return
    console = make_console()
    if result.report is not None:
        console.print(transfer_table(result.report, result.champion))
        for line in transfer_summary(result.report, result.champion):
            console.print(line, highlight=False)
    click.echo(f"{result.ran} runs now ({result.failed} not ok), {result.skipped} already in the store")
