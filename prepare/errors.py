"""The errors prepare raises: each says in one line what went wrong and what to do."""


class PrepareError(Exception):
    """A user-facing problem with data, profiles or the run contract (one line, actionable)."""
