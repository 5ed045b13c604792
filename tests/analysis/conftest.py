"""Fixtures of tests/analysis, defined in analysis_support.py and web_support.py (test modules import helpers from there, never from conftest)."""

from analysis_support import *  # noqa: F401,F403
from web_support import browser  # noqa: F401
