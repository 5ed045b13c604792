"""The errors trainer raises. A failed training run is data (a RunResult), never one of these."""


class TrainerError(Exception):
    """A user-facing problem with how a run was asked for (one line that says what to do)."""
