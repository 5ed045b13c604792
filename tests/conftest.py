"""Shared fixtures: a private EVOLVE_HOME for every test, and one prepared tiny dataset per session."""

from __future__ import annotations

import os

import pytest

SCRUBBED = (
    "EVOLVE_PROFILE",
    "EVOLVE_DEPTH",
    "EVOLVE_TIME_BUDGET",
    "EVOLVE_SEED",
    "EVOLVE_DEVICE",
    "EVOLVE_RESULT",
    "EVOLVE_DATA",
    "EVOLVE_RESULT_KEY",
)


@pytest.fixture(autouse=True)
def evolve_home(tmp_path, monkeypatch):
    """Every test gets its own empty EVOLVE_HOME and no inherited EVOLVE_* settings."""
    home = tmp_path / "evolve-home"
    home.mkdir()
    monkeypatch.setenv("EVOLVE_HOME", str(home))
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny profile prepared once from the builtin source; returns its dataset directory.

    Tests that train or evaluate set `EVOLVE_DATA` to this path (see `use_tiny_data`)."""
    from prepare.pipeline import prepare_dataset
    from prepare.profiles import get_profile

    home = tmp_path_factory.mktemp("tiny-home")
    old = os.environ.get("EVOLVE_HOME")
    os.environ["EVOLVE_HOME"] = str(home)
    try:
        manifest = prepare_dataset(get_profile("tiny"), source="builtin")
    finally:
        if old is None:
            os.environ.pop("EVOLVE_HOME", None)
        else:
            os.environ["EVOLVE_HOME"] = old
    return manifest.path


@pytest.fixture
def use_tiny_data(tiny_data, monkeypatch):
    """Point EVOLVE_DATA and EVOLVE_PROFILE at the session's prepared tiny dataset."""
    monkeypatch.setenv("EVOLVE_DATA", str(tiny_data))
    monkeypatch.setenv("EVOLVE_PROFILE", "tiny")
    return tiny_data
