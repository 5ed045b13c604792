"""Rewrites a file of the prepared data it trains on (here: just its timestamp), then reports."""

import os
from pathlib import Path

import prepare

cfg = prepare.run_config()
os.utime(Path(cfg.data_dir) / "val.bin", ns=(0, 0))
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 0.5)
