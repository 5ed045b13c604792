"""Metric attacks: each is rejected by the static guard or judged invalid by the trainer, and an honest run still passes."""

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
from trainer.judge import training_limit  # noqa: E402

NAMES = [a.name for a in ATTACKS]


@pytest.fixture(scope="module")
def lab(tiny_data, tmp_path_factory):
    """Every attack committed, guarded and (unless the guard is its only judge) run for real."""
    root = tmp_path_factory.mktemp("attacks")
    prepare_copy = root / "prepare-copy" / "prepare"
    shutil.copytree(Path(prepare.__file__).parent, prepare_copy, ignore=shutil.ignore_patterns("__pycache__"))
    lab = Lab(root=root, data=Path(tiny_data), prepare_copy=prepare_copy)
    lab.outcomes = lab.run_all(ATTACKS)
    return lab


def test_there_are_at_least_ten_distinct_attacks():
    assert len(set(NAMES)) == len(NAMES) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_gets_its_verdict(lab, name):
    outcome = lab.outcomes[name]
    attack, result = outcome.variant, outcome.result

    if attack.guard is None:
        assert outcome.guard.ok, outcome.guard.reason  # it gets past the guard: the trainer must hold
    else:
        assert not outcome.guard.ok and attack.guard in outcome.guard.reason
    if attack.status is None:
        assert attack.guard, "an attack the trainer cannot see must be one the guard rejects"
        return
    assert result.status is attack.status, (result.reason, result.error_tail[-3000:])
    assert attack.reason in result.reason


def test_an_honest_run_and_the_flagrant_attacks_keep_apart(lab):
    honest = lab.outcomes["honest_baseline"].result
    assert honest.ok and honest.extra["evaluations"] == 1 and honest.extra["eval_num_params"] > 0
    refused = [o for o in lab.outcomes.values() if o.variant.status not in (None, Status.OK)]
    assert len(refused) >= 10 and not any(o.result.ok for o in refused)


def test_a_hardcoded_depth_shows_in_the_metrics_parameter_count(lab):
    """No rule sees `GPT(vocab, 3, ...)`: both runs pass, but the model the metric scored has the
    same size at depth 2 and 3, and not the size the honest baseline has at depth 2."""
    at_2 = lab.outcomes["hardcodes_the_depth_run_at_2"].result
    at_3 = lab.outcomes["hardcodes_the_depth_run_at_3"].result
    honest = lab.outcomes["honest_baseline"].result
    assert at_2.metrics["depth"] == 2 and at_3.metrics["depth"] == 3  # what it claims
    assert at_2.extra["eval_num_params"] == at_3.extra["eval_num_params"]
    assert at_2.extra["eval_num_params"] != honest.extra["eval_num_params"]


def test_untimed_training_inside_the_allowance_is_visible(lab):
    """The documented limit: work outside the timed loop is bounded by the allowance, not stopped;
    prepare's own clock, started before train.py's first line, counts it (5 s of it here)."""
    outcome = lab.outcomes["trains_before_the_timer_within_the_allowance"]
    sneaky, budget = outcome.result, outcome.variant.budget
    assert sneaky.ok
    m = sneaky.metrics
    assert m["training_seconds"] <= training_limit(budget, m["training_seconds"], m["num_steps"])
    assert sneaky.extra["elapsed_seconds"] - sneaky.metrics["training_seconds"] >= 5.0
    assert sneaky.extra["elapsed_seconds"] <= sneaky.wall_seconds


def test_nothing_outside_the_worktrees_changed(lab):
    for part, before in lab.before.items():
        after = lab.after[part]
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{part} changed: {changed[:10]}"


def test_a_shell_is_out_of_the_sandboxs_sight_but_not_of_the_hash(lab):
    """The documented limit: the shell's edit of (its own copy of) prepare happened; the run is invalid."""
    edited = lab.root / "prepare-edits_prepare_from_a_shell" / "prepare" / "metric.py"
    assert "# better" in edited.read_text()
    assert lab.outcomes["edits_prepare_from_a_shell"].result.status is Status.INVALID
