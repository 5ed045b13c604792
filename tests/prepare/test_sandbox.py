"""The tripwire's rules: the most specific root decides, the harness's folders stay out of reach."""

from __future__ import annotations

import sys

import pytest

from prepare import sandbox
from prepare.sandbox import Policy


@pytest.fixture
def layout(tmp_path):
    """A run without namespaces: its copy of the worktree lives in the harness's log folder."""
    ws = tmp_path / "ws"
    logs = ws / ".evolve" / "logs" / "g0003" / "search-s42-1"
    work = logs / "run-abc" / "work"
    other = ws / ".evolve" / "logs" / "g0002" / "search-s42-1" / "run-def" / "work"
    data = tmp_path / "data"
    for d in (work, other, data, ws / ".git"):
        d.mkdir(parents=True)
    (ws / ".evolve" / "evolve.db").write_text("store")
    policy = Policy(
        writable=(str(work), str(tmp_path / "tmp")),
        readable=(str(data),),
        secret=(str(data / "val.bin"),),
        hidden=(str(ws / ".evolve"), str(ws / ".git"), str(logs)),
    )
    return policy, ws, work, other, data


def test_the_runs_own_copy_is_its_own_even_inside_the_harnesss_log_folder(layout):
    policy, ws, work, other, data = layout
    assert policy.allows(str(work / "train.py")) and policy.may_read(str(work / "train.py"))
    assert policy.may_read(str(data / "tokenizer.json")) and not policy.allows(str(data / "x"))


def test_the_store_git_and_other_runs_stay_hidden(layout):
    policy, ws, work, other, data = layout
    for path in (ws / ".evolve" / "evolve.db", ws / ".git" / "config", other / "train.py", work.parent / "x"):
        assert not policy.may_read(str(path)) and not policy.allows(str(path)), path
        assert policy.hides(str(path)), path
    assert not policy.may_read(str(data / "val.bin"))  # a secret, in a readable folder


def test_a_folder_above_the_runs_roots_lists_names_only_where_it_is_not_the_harnesss(layout, tmp_path):
    policy, ws, work, other, data = layout
    assert policy.may_read(str(tmp_path))  # above data and work: names only
    assert not policy.may_read(str(work.parent.parent))  # the log folder above the run: hidden
    assert not policy.may_read(str(ws / ".evolve"))
    assert not policy.may_read(str(tmp_path / "elsewhere" / "file"))  # beside, not above


def test_a_missing_relative_marker_of_sys_path_may_be_tried_and_nothing_else(layout, monkeypatch):
    policy, ws, work, other, data = layout
    hook = sandbox._Hook(policy)
    monkeypatch.chdir(ws)
    marker = "__editable__.pkg-0.1.finder.__path_hook__"
    monkeypatch.setattr(sys, "path", [marker, ".evolve/evolve.db", *sys.path])
    hook.handle("open", (marker, "rb", 0))  # zipimport probing the marker: nothing is there
    with pytest.raises(PermissionError, match="harness"):
        hook.handle("open", (".evolve/evolve.db", "rb", 0))  # in sys.path, but it exists
    with pytest.raises(PermissionError):
        hook.handle("open", (marker, "wb", 0))  # a write is checked whatever the name
    with pytest.raises(PermissionError):
        hook.handle("open", (".git/config", "rb", 0))  # missing too, but no entry of sys.path
