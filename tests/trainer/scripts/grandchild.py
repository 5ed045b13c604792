"""Starts two grandchildren that sleep forever (one in its own session) and exits without waiting."""

import os
import subprocess
import sys

import prepare

cfg = prepare.run_config()
sleeper = [sys.executable, "-c", "import time; time.sleep(1000)"]
pids = [subprocess.Popen(sleeper).pid, subprocess.Popen(sleeper, start_new_session=True).pid]
with open(os.environ["PID_PATH"], "w") as f:
    f.write(" ".join(map(str, pids)))
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 0.5)
