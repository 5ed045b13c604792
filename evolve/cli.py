"""The `evolve` command line. Each subcommand lives in its own module and is registered below."""

from __future__ import annotations

import sys

import click

from prepare.errors import PrepareError
from trainer.errors import TrainerError

from .errors import EvolveError

USER_ERRORS: tuple[type[BaseException], ...] = (EvolveError, PrepareError, TrainerError)


class _Group(click.Group):
    """A click group that turns user errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoevolve")
def main():
    """autoevolve: population-based evolutionary search over LLM training scripts.

    \b
    A typical day:
      evolve prepare                  data + tokenizer into $EVOLVE_HOME
      evolve init runs/exp1           a workspace: git repo with train.py and program.md
      evolve run --hours 48           the evolution (Ctrl-C stops, `evolve run` resumes)
      evolve status                   population, elites, duty cycle
      evolve serve                    the same, live in a browser (http://127.0.0.1:8765/)
    """


def _register() -> None:
    # --- subcommands (one import per command module) ---
    from .cli_prepare import prepare_cmd

    main.add_command(prepare_cmd)
    from .cli_genome import export_cmd, init_cmd

    main.add_command(init_cmd)
    main.add_command(export_cmd)
    from .cli_report import report_cmd

    main.add_command(report_cmd)
    from .cli_run import demo_cmd, lineage_cmd, run_cmd, show_cmd, status_cmd, top_cmd

    for command in (run_cmd, status_cmd, top_cmd, show_cmd, lineage_cmd, demo_cmd):
        main.add_command(command)
    from .cli_validate import validate_cmd

    main.add_command(validate_cmd)
    from .cli_serve import serve_cmd

    main.add_command(serve_cmd)
    # --- end of subcommands ---


_register()
