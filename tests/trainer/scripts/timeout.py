"""Never finishes: sleeps far past budget + allowance and ignores SIGTERM."""

import signal
import time

import prepare

cfg = prepare.run_config()
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL may end it
print("sleeping", flush=True)
time.sleep(1000)
