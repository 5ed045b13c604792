"""Fails before training starts: an import that does not exist."""

import this_module_does_not_exist  # noqa: F401

import prepare

prepare.report(val_bpb=1.0, training_seconds=0.1)
