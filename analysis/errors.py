"""The analysis package's exception: a user-facing problem, printed by the CLI as one line."""

from __future__ import annotations

from evolve.errors import EvolveError


class AnalysisError(EvolveError):
    """Nothing to analyse at a path, an unknown run or individual, a view that needs the store."""
