"""Each status comes from a real run of a purpose-built train.py, and the trainer names it right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import trainer
from trainer import Status


def test_a_real_tiny_training_run_is_ok_with_its_provenance(run_script, tiny_data):
    from prepare import load_manifest

    result = run_script("ok", budget=2.0, seed=3)

    assert result.status is Status.OK, result.error_tail
    assert math.isfinite(result.val_bpb) and 0 < result.val_bpb < math.log2(1024)
    assert 0 < result.metrics["training_seconds"] <= 2.0 * 1.02
    assert result.metrics["num_steps"] > 0
    assert result.error_tail == ""
    # provenance: everything needed to reproduce or refuse to compare the number
    assert (result.depth, result.budget, result.seed, result.profile) == (2, 2.0, 3, "tiny")
    assert result.devices == ("cpu",) and result.gpu_name == "cpu"
    assert result.data_fingerprint == load_manifest(tiny_data).fingerprint
    assert result.torch_version and result.commit is None  # not a git checkout
    log = Path(result.log_path).read_text()
    assert "val_bpb:" in log and "[trainer] exit code 0" in log
    # it stores and loads back unchanged
    stored = json.loads(json.dumps(result.to_dict()))
    assert trainer.RunResult.from_dict(stored) == result


@pytest.mark.parametrize(
    ("script", "status", "reason"),
    [
        ("crash_import", Status.CRASH, "ModuleNotFoundError"),
        ("crash_name", Status.CRASH, "NameError: name 'learning_rate'"),
        ("oom_host", Status.OOM, "out of memory"),
        ("oom_cuda", Status.OOM, "out of memory"),
        ("diverged_abort", Status.DIVERGED, "NaN"),
        ("diverged_nan", Status.DIVERGED, "val_bpb is nan"),
        ("forged", Status.INVALID, "not signed"),
        ("wrong_depth", Status.INVALID, "depth 3 reported, 2 asked"),
        ("over_budget", Status.INVALID, "over the budget"),
        ("lie_summary", Status.INVALID, "log says val_bpb: 0.900000"),
    ],
)
def test_a_bad_script_gets_its_status(run_script, script, status, reason):
    result = run_script(script)

    assert result.status is status, (result.reason, result.error_tail)
    assert reason in result.reason
    assert not result.status.is_success()
    assert result.error_tail  # the last lines of the log, for the LLM's "recent failures"
    assert f"{status.value} (" in Path(result.log_path).read_text()


def test_a_forged_result_reports_no_metrics(run_script):
    result = run_script("forged")

    assert result.status is Status.INVALID
    assert result.metrics == {} and result.val_bpb is None


def test_a_run_past_budget_plus_allowance_is_killed_as_timeout(run_script):
    # timeout.py ignores SIGTERM, so only the SIGKILL after the grace period ends it
    result = run_script("timeout", budget=1.0, allowance=1.0, grace=1.0)

    assert result.status is Status.TIMEOUT
    assert 2.0 <= result.wall_seconds < 8.0
    assert "sleeping" in result.error_tail


def test_a_run_that_exits_without_reporting_is_invalid(run_script):
    result = run_script("spam", extra_env={"SPAM_MB": "1"})

    assert result.status is Status.INVALID
    assert "no result file" in result.reason


def test_bad_requests_are_refused_before_anything_runs(worktree_with, tiny_data, tmp_path):
    tree = worktree_with("ok")
    with pytest.raises(trainer.TrainerError, match="no missing.py"):
        trainer.run(tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tiny_data, script="missing.py")
    with pytest.raises(trainer.TrainerError, match="unknown profile"):
        trainer.run(tree, depth=2, budget=1, seed=0, profile="huge", data_dir=tiny_data)
    with pytest.raises(trainer.TrainerError, match="all GPU indices or all 'cpu'"):
        trainer.run(tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tiny_data, devices=(0, "cpu"))
    with pytest.raises(trainer.TrainerError, match="no prepared data"):
        trainer.run(tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tmp_path / "nothing")
    with pytest.raises(trainer.TrainerError, match="inside the worktree"):
        trainer.run(
            tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tiny_data, log_dir=tree / "logs"
        )
    with pytest.raises(trainer.TrainerError, match="EVOLVE_DEPTH"):
        trainer.run(
            tree,
            depth=2,
            budget=1,
            seed=0,
            profile="tiny",
            data_dir=tiny_data,
            extra_env={"EVOLVE_DEPTH": "4"},
        )


def test_data_prepared_for_another_profile_is_refused(worktree_with, tiny_data):
    with pytest.raises(trainer.TrainerError, match="prepared for profile 'tiny', not 'h100'"):
        trainer.run(worktree_with("ok"), depth=2, budget=1, seed=0, profile="h100", data_dir=tiny_data)
