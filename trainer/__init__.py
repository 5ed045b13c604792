"""trainer: runs one genome at one (depth, budget, seed) and judges the run.

A subprocess in its own process group with a scrubbed environment and a wall-clock limit; the
result is a `RunResult` whose `Status` the trainer decides, never train.py. Executors run many
jobs at once on local devices (`LocalExecutor`) or on a Ray cluster (`RayExecutor`, needs the
`ray` extra).
"""

from __future__ import annotations

from .errors import TrainerError
from .executor import Executor, Job, LocalExecutor
from .quarantine import Quarantine, device_fault
from .ray_executor import RayExecutor
from .result import RunResult, Status
from .runner import run

__all__ = [
    "Executor",
    "Job",
    "LocalExecutor",
    "Quarantine",
    "RayExecutor",
    "RunResult",
    "Status",
    "TrainerError",
    "device_fault",
    "run",
]
