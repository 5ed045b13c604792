"""Fails before training starts: an import that does not exist."""

import this_module_does_not_exist  # noqa: F401

import prepare

prepare.report(num_steps=0)
