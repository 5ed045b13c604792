"""`evolve report`: the run as one self-contained HTML page (or Markdown), plots included."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md"]),
    default="html",
    show_default=True,
    help="html: one file with the plots embedded; md: Markdown with the PNGs in a folder beside it.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write [default: .evolve/report/<run>.<format> in the workspace].",
)
@click.option("--run", "run", default=None, help="Which run of the store [default: the newest].")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1), help="Rows in the leaderboard.")
@click.option(
    "--png",
    "png_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the three plots as PNG files into this folder.",
)
def report_cmd(
    path: Path, fmt: str, out: Path | None, run: str | None, top: int, png_dir: Path | None
) -> None:
    """Write a report of the run in the workspace at PATH (default: here).

    \b
    The report holds a summary, three plots (progress, the family tree, transfer to depth 24),
    the leaderboard, the operator and island tables, and the champion's line of descent step by
    step with each step's diff. It only reads the store, so it is safe while `evolve run` runs.
    Without a store (only the git branches), the family tree and descriptions are still shown.
    """  # fmt: skip
    from .report import write_report  # here, not above: it loads pandas and matplotlib

    written = write_report(path, out, fmt=fmt, run=run, top=top)
    click.echo(f"wrote {written}")
    if png_dir is not None:
        from . import plots
        from .frames import lineage, one_run

        d = one_run(lineage(path), run)
        for name, draw in plots.PLOTS.items():
            click.echo(f"wrote {plots.save(draw(d), png_dir / f'{name}.png')}")
