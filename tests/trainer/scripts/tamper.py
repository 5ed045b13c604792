"""Edits a file of the prepare package it imports (the metric), then reports as if all were fine."""

from pathlib import Path

import prepare

cfg = prepare.run_config()
metric = Path(prepare.__file__).parent / "metric.py"
metric.write_text(metric.read_text() + "\n# a better metric\n")
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 0.5)
