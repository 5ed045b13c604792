"""Fails mid-script: a NameError, as an LLM edit that renamed a variable would leave behind."""

import prepare

cfg = prepare.run_config()
print("training...", flush=True)
prepare.report(cfg, val_bpb=learning_rate * 2, training_seconds=0.1)  # noqa: F821
