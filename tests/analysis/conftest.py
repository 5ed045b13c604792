"""Fixtures of tests/analysis, defined in analysis_support.py (test modules import helpers from there, never from conftest)."""

from analysis_support import *  # noqa: F401,F403
