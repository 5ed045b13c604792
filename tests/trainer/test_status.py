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

    result = run_script("ok", budget=8192, seed=3)

    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert math.isfinite(result.val_bpb) and 0 < result.val_bpb < math.log2(1024)
    # the harness's numbers: 8192 tokens are 4 batches of 8 x 256, one optimizer step each
    assert result.metrics["training_tokens"] == 8192 and result.metrics["num_steps"] == 4
    assert result.metrics["training_seconds"] > 0 and result.metrics["handover_seconds"] >= 0
    assert result.metrics["seen_tokens"] == 8192  # train.py's own note, from the loader
    assert result.extra["eval_probes"] >= 32 and result.extra["eval_probe_max_diff"] <= 1e-3
    assert result.error_tail == ""
    # provenance: everything needed to reproduce or refuse to compare the number
    assert (result.depth, result.budget, result.budget_unit, result.seed, result.profile) == (
        2,
        8192,
        "tokens",
        3,
        "tiny",
    )
    assert result.devices == ("cpu",) and result.gpu_name == "cpu"
    assert result.isolation.startswith("bubblewrap")
    assert result.data_fingerprint == load_manifest(tiny_data).fingerprint
    assert result.torch_version and result.commit is None  # not a git checkout
    log = Path(result.log_path).read_text()
    assert "[trainer] val_bpb:" in log
    assert "[trainer] exit code 0, " in log or "[trainer] stopped 1 s after its handover, " in log
    # it stores and loads back unchanged
    stored = json.loads(json.dumps(result.to_dict()))
    assert trainer.RunResult.from_dict(stored) == result


def test_the_same_seed_and_budget_give_the_same_score(run_script):
    first, second = run_script("ok", seed=5), run_script("ok", seed=5)

    assert first.ok and second.ok
    assert first.val_bpb == second.val_bpb  # a token budget: the score depends on code and seed only


@pytest.mark.parametrize(
    ("script", "status", "reason"),
    [
        ("crash_import", Status.CRASH, "ModuleNotFoundError"),
        ("crash_name", Status.CRASH, "NameError: name 'learning_rate'"),
        ("oom_host", Status.OOM, "out of memory"),
        ("oom_cuda", Status.OOM, "out of memory"),
        ("diverged_abort", Status.DIVERGED, "NaN"),
        ("diverged_nan", Status.DIVERGED, "val_bpb is nan"),
        ("no_loader", Status.INVALID, "no model was handed over"),
        ("spam", Status.INVALID, "no model was handed over"),
    ],
)
def test_a_bad_script_gets_its_status(run_script, script, status, reason):
    result = run_script(script, extra_env={"SPAM_MB": "1"})

    assert result.status is status, (result.reason, result.error_tail)
    assert reason in result.reason
    assert not result.status.is_success()
    assert result.error_tail  # the last lines of the log, for the LLM's "recent failures"
    assert f"{status.value} (" in Path(result.log_path).read_text()


def test_a_flattering_summary_decides_nothing(run_script):
    honest = run_script("lie_summary")

    assert honest.status is Status.OK, honest.reason
    assert honest.val_bpb > 3  # the untrained bigram the evaluator scored, not the 0.1 or 0.9 printed
    assert honest.metrics["num_steps"] == 2 and honest.metrics["training_tokens"] == 4096  # not its 10**6


def test_training_after_the_budget_is_stopped_and_invalid(run_script):
    result = run_script("hoard", budget=1.0, budget_unit="seconds")

    assert result.status is Status.INVALID
    assert "not handed over within" in result.reason and "after the budget does not count" in result.reason
    assert result.wall_seconds < 25  # stopped soon after the budget, not left to train for 30 budgets


def test_a_run_past_its_allowance_is_killed_as_timeout(run_script):
    # timeout.py never asks for data and ignores SIGTERM: the window opens at the allowance, and
    # once the window and the exit grace are over, only SIGKILL ends it
    result = run_script(
        "timeout",
        budget=1.0,
        budget_unit="seconds",
        allowance=1.0,
        window_limit=1.0,
        exit_grace=1.0,
        grace=1.0,
    )

    assert result.status is Status.TIMEOUT
    assert result.wall_seconds < 10
    assert "sleeping" in result.error_tail


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
    with pytest.raises(trainer.TrainerError, match="budget_unit must be one of"):
        trainer.run(tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tiny_data, budget_unit="steps")
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


def test_what_a_run_does_after_its_handover_does_not_count_not_even_a_crash(run_script):
    honest = run_script("ok", budget=8192, seed=3)
    late = run_script("crash_after_handover", budget=8192, seed=3)
    assert late.status is Status.OK, late.reason
    assert late.val_bpb == honest.val_bpb  # the same model: the same score, whatever came after
