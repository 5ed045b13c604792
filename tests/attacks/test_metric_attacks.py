"""Metric attacks: each is refused by the guard, judged invalid, or changes nothing; an honest run still passes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "badgenomes"))  # the shared lab
from attack_variants import ATTACKS  # noqa: E402
from genome_lab import Lab  # noqa: E402

import prepare  # noqa: E402
from trainer import Status  # noqa: E402

NAMES = [a.name for a in ATTACKS]


@pytest.fixture(scope="module")
def lab(tiny_data, tmp_path_factory):
    """Every attack committed, guarded and (unless the guard is its only judge) run for real."""
    root = tmp_path_factory.mktemp("attacks")
    prepare_copy = root / "prepare-copy" / "prepare"
    shutil.copytree(Path(prepare.__file__).parent, prepare_copy, ignore=shutil.ignore_patterns("__pycache__"))
    lab = Lab(root=root, data=Path(tiny_data), prepare_copy=prepare_copy)
    lab.values = {"STORE": str(lab.ws / ".evolve"), "DATA": str(lab.data), "PREPARE": str(prepare_copy)}
    lab.outcomes = lab.run_all(ATTACKS)
    yield lab
    shutil.rmtree(lab.sentinel, ignore_errors=True)


def test_there_are_at_least_twenty_distinct_attacks():
    assert len(set(NAMES)) == len(NAMES) >= 20


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_gets_its_verdict(lab, name):
    outcome = lab.outcomes[name]
    attack, result = outcome.variant, outcome.result

    if attack.guard is None:
        assert outcome.guard.ok, outcome.guard.reason  # it gets past the guard: the harness must hold
    else:
        assert not outcome.guard.ok and attack.guard in outcome.guard.reason
    if attack.status is None:
        assert attack.guard, "an attack the trainer cannot see must be one the guard rejects"
        return
    assert result.status is attack.status, (result.reason, result.error_tail[-3000:])
    assert attack.reason in result.reason
    honest = lab.outcomes["honest_baseline"].result
    if attack.same_as_honest:  # a token budget: the same code path and seed give the same number
        assert result.val_bpb == honest.val_bpb, Path(result.log_path).read_text()[-3000:]
        assert result.metrics["training_tokens"] == honest.metrics["training_tokens"]
    if attack.worse_than_honest:
        assert result.val_bpb > honest.val_bpb


def test_what_the_attacks_tried_was_refused(lab):
    """The attacks that try and carry on print what came of it: every one was refused."""
    for name, outcome in lab.outcomes.items():
        if outcome.result is None:
            continue
        log = Path(outcome.result.log_path).read_text()
        assert "ATTACK: it worked" not in log, name


def test_an_honest_run_and_the_flagrant_attacks_keep_apart(lab):
    honest = lab.outcomes["honest_baseline"].result
    assert honest.ok and honest.extra["eval_num_params"] > 0 and honest.extra["eval_probe_max_diff"] == 0.0
    assert honest.metrics["training_tokens"] == 4096 and honest.isolation.startswith("bubblewrap")
    refused = [o for o in lab.outcomes.values() if o.variant.status not in (None, Status.OK)]
    assert len(refused) >= 10 and not any(o.result.ok for o in refused)


def test_a_hardcoded_depth_shows_in_the_scored_models_size(lab):
    """No rule sees `GPT(vocab, 3, ...)`: both runs pass, but the model the evaluator scored has the
    same size at depth 2 and 3, and not the size the honest baseline has at depth 2."""
    at_2 = lab.outcomes["hardcodes_the_depth_run_at_2"].result
    at_3 = lab.outcomes["hardcodes_the_depth_run_at_3"].result
    honest = lab.outcomes["honest_baseline"].result
    assert at_2.metrics["depth"] == 2 and at_3.metrics["depth"] == 3  # what it claims
    assert at_2.extra["eval_num_params"] == at_3.extra["eval_num_params"]
    assert at_2.extra["eval_num_params"] != honest.extra["eval_num_params"]


def test_nothing_outside_the_worktrees_changed(lab):
    """The store, the workspace's git, the data, prepare (its __pycache__ included) and the user's files."""
    for part, before in lab.before.items():
        after = lab.after[part]
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{part} changed: {changed[:10]}"
    edited = lab.root / "prepare-edits_prepare_from_a_shell" / "prepare" / "metric.py"
    assert "# better" not in edited.read_text()  # the shell met a read-only file system
