"""The evolve package's exceptions. A failed training run is data (a row), never one of these."""


class EvolveError(Exception):
    """A user-facing problem: the CLI prints it as one line and exits with code 1."""
