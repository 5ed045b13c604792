"""Fails mid-script: a NameError, as an LLM edit that renamed a variable would leave behind."""

import prepare

cfg = prepare.run_config()
print("training...", flush=True)
prepare.report(cfg, lr=learning_rate * 2)  # noqa: F821
