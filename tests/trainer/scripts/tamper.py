"""Edits a file of the prepare package it imports (the metric) from a shell, where no in-process
check can see it, then trains: the read-only mount stops the edit, and the run crashes on it."""

import subprocess
from pathlib import Path

import prepare

cfg = prepare.run_config()
metric = Path(prepare.__file__).parent / "metric.py"
subprocess.run(["sh", "-c", 'echo "# a better metric" >> "$1"', "sh", str(metric)], check=True)
