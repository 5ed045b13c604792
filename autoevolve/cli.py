"""The `evolve` command (pyproject's console script): the search's commands (evolve.cli) with the
report and the web view (analysis) and the demo, which need both packages."""

from __future__ import annotations

from analysis.cli_report import report_cmd
from analysis.cli_serve import serve_cmd
from evolve.cli import new_group

from .demo import demo_cmd

main = new_group()
for _command in (report_cmd, serve_cmd, demo_cmd):
    main.add_command(_command)

if __name__ == "__main__":
    main()
