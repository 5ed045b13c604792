"""The search's half of the `evolve` command line: each subcommand lives in its own module and is
registered below.

The command as installed is autoevolve.cli's `main`: these commands plus `report` and `serve`
(analysis.cli_report, analysis.cli_serve) and `demo` (autoevolve.demo), which need the analysis
package; analysis imports evolve, so evolve does not import analysis (tests/test_import_graph.py).
"""

from __future__ import annotations

import errno
import sys

import click

from prepare.errors import PrepareError
from trainer.errors import TrainerError

from .errors import EvolveError

USER_ERRORS: tuple[type[BaseException], ...] = (EvolveError, PrepareError, TrainerError)
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


class _Group(click.Group):
    """A click group that turns user errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:  # the machine's state, not a bug: a full disk, a read-only folder
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            text = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                    errno.EROFS: "a read-only file system"}.get(exc.errno, exc.strerror)  # fmt: skip
            click.echo(f"error: {text}{where}; fix that and run the command again", err=True)
            sys.exit(1)


HELP = """autoevolve: population-based evolutionary search over LLM training scripts.

    \b
    A typical day:
      evolve prepare                  data + tokenizer into $EVOLVE_HOME
      evolve init runs/exp1           a workspace: git repo with train.py and program.md
      evolve run --hours 48           the evolution (Ctrl-C stops, `evolve run` resumes)
      evolve status                   population, elites, duty cycle
      evolve serve                    the same, live in a browser (http://127.0.0.1:8765/)
    """


def new_group(help: str = HELP) -> click.Group:
    """A root group with the search's commands: the user errors it raises are one line and exit 1."""

    @click.group(cls=_Group, help=help, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="autoevolve")
    def main():
        pass

    # --- subcommands (one import per command module) ---
    from .cli_prepare import prepare_cmd

    main.add_command(prepare_cmd)
    from .cli_genome import export_cmd, init_cmd

    main.add_command(init_cmd)
    main.add_command(export_cmd)
    from .cli_run import lineage_cmd, run_cmd, show_cmd, status_cmd, top_cmd

    for command in (run_cmd, status_cmd, top_cmd, show_cmd, lineage_cmd):
        main.add_command(command)
    from .cli_validate import validate_cmd

    main.add_command(validate_cmd)
    from .cli_doctor import doctor_cmd

    main.add_command(doctor_cmd)
    # --- end of subcommands ---
    return main


# The search's commands alone, for the tests and scripts that drive them (`evolve report`, `serve`
# and `demo` are in autoevolve.cli's `main`, the installed command).
main = new_group()
