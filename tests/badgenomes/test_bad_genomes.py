"""Bad genomes: purpose-built train.py variants, each judged right, none changing anything outside its worktree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from badgenome_variants import VARIANTS
from genome_lab import Lab, alive_with

import prepare

NAMES = [v.name for v in VARIANTS]


@pytest.fixture(scope="module")
def lab(tiny_data, tmp_path_factory):
    """Every variant committed, guarded and run (two CPU slots) in one real workspace."""
    root = tmp_path_factory.mktemp("badgenomes")
    prepare_copy = root / "prepare-copy" / "prepare"  # the child imports this copy (see tests/trainer)
    shutil.copytree(Path(prepare.__file__).parent, prepare_copy, ignore=shutil.ignore_patterns("__pycache__"))
    lab = Lab(root=root, data=Path(tiny_data), prepare_copy=prepare_copy)
    lab.values = {
        "USERS": str(lab.sentinel),
        "GITDIR": str(lab.ws / ".git"),
        "STORE": str(lab.ws / ".evolve"),
        "OTHER": str(lab.ws / ".evolve" / "worktrees" / "0"),  # the first variant's worktree
        "DATA": str(lab.data),
        "PREPARE": str(prepare_copy),
    }
    lab.outcomes = lab.run_all(VARIANTS)
    yield lab
    shutil.rmtree(lab.sentinel, ignore_errors=True)


def test_there_are_at_least_thirty_distinct_bad_genomes():
    assert len(set(NAMES)) == len(NAMES) >= 30
    assert NAMES[0] != "reads_another_worktree"  # it reads the first variant's worktree


@pytest.mark.parametrize("name", NAMES)
def test_each_bad_genome_gets_its_verdict(lab, name):
    outcome = lab.outcomes[name]
    variant, result = outcome.variant, outcome.result

    assert result.status is variant.status, (result.reason, result.error_tail[-3000:])
    assert variant.reason in result.reason
    if variant.guard is None:
        assert outcome.guard.ok, outcome.guard.reason  # only the trainer can judge this one
    else:
        assert not outcome.guard.ok and variant.guard in outcome.guard.reason
    if variant.check is not None:
        variant.check(outcome, lab)


def test_the_search_goes_on_every_run_came_back_as_a_result(lab):
    assert sorted(lab.outcomes) == sorted(NAMES)
    assert all(o.result.log_path and Path(o.result.log_path).is_file() for o in lab.outcomes.values())


def test_nothing_outside_the_worktrees_changed(lab):
    # the workspace's git directory and store, the data, prepare, and the user's own files
    for part, before in lab.before.items():
        after = lab.after[part]
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{part} changed: {changed[:10]}"


def test_no_process_of_any_run_is_left(lab):
    survivors = {name: alive_with(o.mark) for name, o in lab.outcomes.items()}
    assert not any(survivors.values()), survivors
