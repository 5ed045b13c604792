"""Whose fault is a failing baseline: its train.py's, or the machine's and the harness's?

When the baseline of a run keeps failing, the first wave said "fix train.py" whatever the cause.
A harness that cannot run anything (a cache folder it may not write, corrupted data, a broken
device) then sent users to hunt for a bug that was not in their code. Before blaming train.py,
the engine runs autoevolve's own baseline `train.py` once, exactly as the baseline was run (same
executor, depth, budget, profile, data): if that runs, the workspace's train.py is at fault; if it
fails too, the environment is, and the message says so with the reference run's reason and log.

Faults the trainer can see before a run starts (missing or truncated data, no isolation tool) never
get this far: they raise TrainerError, and nothing is recorded against the baseline.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from genome.workspace import baseline_train_py
from trainer import Executor, Job, RunResult

from .store import Evaluation


def reference_run(executor: Executor, like: Job) -> RunResult:
    """autoevolve's own baseline train.py, run once as the job `like` (in a folder of its own)."""
    with tempfile.TemporaryDirectory(prefix="evolve-reference-") as tmp:
        shutil.copy(baseline_train_py(), Path(tmp) / "train.py")
        job = replace(like, worktree=Path(tmp))
        return executor.submit(job).result()


def baseline_failure(last: Evaluation, reference: RunResult) -> str:
    """The one-line error when the baseline keeps failing, with the reference run's verdict."""
    failing = f"the baseline keeps failing ({last.status}: {last.reason})"
    if reference.ok:
        return (
            f"{failing}; autoevolve's own train.py runs here (val_bpb {reference.metrics['val_bpb']:.4f}), "
            f"so the fault is in this workspace's train.py: see {last.log_path} and fix it"
        )
    return (
        f"{failing}, and so does autoevolve's own train.py ({reference.status.value}: {reference.reason}): "
        f"the machine or the harness is at fault, not train.py; see {reference.log_path}, fix it and run "
        f"`evolve run` again (this session's failures do not count against the baseline then)"
    )
