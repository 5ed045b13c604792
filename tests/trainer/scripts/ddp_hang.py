"""A torchrun worker that records its pid to $PID_DIR and then hangs, ignoring SIGTERM."""

import os
import signal
import time

import prepare

cfg = prepare.run_config()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(os.environ["PID_DIR"], str(cfg.rank)), "w") as f:
    f.write(str(os.getpid()))
time.sleep(1000)
