"""Raises torch's OutOfMemoryError, as a CUDA allocation that does not fit would (faked on CPU)."""

import torch

import prepare

cfg = prepare.run_config()
raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
