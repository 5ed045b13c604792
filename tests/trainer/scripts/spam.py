"""Prints $SPAM_MB megabytes to stdout, then exits without a result."""

import os
import sys

import prepare

cfg = prepare.run_config()
block = (b"x" * 1023 + b"\n") * 1024
for _ in range(int(os.environ["SPAM_MB"])):
    sys.stdout.buffer.write(block)
sys.stdout.buffer.write(b"the end of the spam\n")
