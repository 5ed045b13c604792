"""Runs out of host memory (a MemoryError, as a too-large allocation raises on CPU)."""

import prepare

cfg = prepare.run_config()
raise MemoryError("could not allocate the activations")
