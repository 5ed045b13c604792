"""evolve: the population search, its store and the `evolve` command line."""

from .errors import EvolveError

__all__ = ["EvolveError"]
