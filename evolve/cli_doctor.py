"""`evolve doctor`: are the store, the branches and the worktrees in agreement? `--repair` makes them so."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from genome import GenomeError, open_workspace

from .doctor import diagnose, repair
from .errors import EvolveError


@click.command("doctor")
@click.option(
    "--workspace",
    "-w",
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace directory.",
)
@click.option(
    "--repair", "do_repair", is_flag=True, help="Restore, put back and re-adopt what is wrong (see below)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings (and the repair) as JSON.")
def doctor_cmd(workspace, do_repair, as_json):
    """Check the store, the evo/ branches and the worktrees against each other; exit 1 on an error.

    \b
    Reads only, so it works in a read-only workspace. With --repair (never beside a running
    `evolve run`): a damaged or foreign store is moved to .evolve/damaged/ and the newest good
    backup restored; branches deleted or moved by hand are put back at the commit the store
    scored (a moved tip is kept under refs/evolve/displaced/); what git holds and the store does
    not is re-adopted from the commit trailers and queued again; the worktree pool is pruned.
    It ends with what could not be recovered.
    """
    try:
        ws = open_workspace(workspace)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    report = None
    if do_repair:
        try:
            report = repair(ws)
        except GenomeError as exc:
            raise EvolveError(str(exc)) from None
    findings = diagnose(ws)
    errors = [f for f in findings if f.level == "error"]
    if as_json:
        data = {"findings": [asdict(f) for f in findings], "errors": len(errors)}
        if report is not None:
            data["repair"] = asdict(report)
        click.echo(json.dumps(data, indent=2))
    else:
        if report is not None:
            for line in report.done:
                click.echo(f"repaired: {line}")
            for line in report.lost:
                click.echo(f"not recovered: {line}")
        for finding in findings:
            click.echo(finding.line())
        if errors and not do_repair:
            click.echo(f"{len(errors)} error(s): `evolve doctor --repair` fixes what can be fixed")
    if errors:
        sys.exit(1)
