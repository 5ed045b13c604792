"""autoevolve: the `evolve` command as a whole, above the packages it is made of.

    evolve/    the search, its store and its commands (run, status, validate, ...)
    analysis/  the run in pandas, the report and the web view (`evolve report`, `evolve serve`)
    autoevolve/cli.py   the installed `evolve` command: evolve's commands and analysis's
    autoevolve/demo.py  `evolve demo`, which evolves, validates and writes the report

analysis reads evolve's store and judges with evolve's code, so it imports evolve and evolve never
imports analysis; what needs both sits here (tests/test_import_graph.py keeps it so).
"""
