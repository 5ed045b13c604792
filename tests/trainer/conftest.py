"""Fixtures of tests/trainer, defined in trainer_support.py (test modules import helpers from there, never from conftest)."""

from trainer_support import *  # noqa: F401,F403
