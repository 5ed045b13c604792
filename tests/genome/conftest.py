"""Fixtures of tests/genome, defined in genome_support.py (test modules import helpers from there, never from conftest)."""

from genome_support import *  # noqa: F401,F403
from genome_support import _evo_branches_sound  # noqa: F401
