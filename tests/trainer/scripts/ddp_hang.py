"""A torchrun worker that touches $BEAT_DIR/<rank> forever, ignoring SIGTERM."""

import os
import signal
import time
from pathlib import Path

import prepare

cfg = prepare.run_config()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    Path(os.environ["BEAT_DIR"], str(cfg.rank)).touch()
    time.sleep(0.05)
