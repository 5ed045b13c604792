"""RunResult storage and the judge's reading of a log: what evolve stores and what a user reads."""

from __future__ import annotations

import json
import math

from trainer import RunResult, Status
from trainer.judge import last_error, parse_summary


def _result(**changes) -> RunResult:
    fields = dict(
        status=Status.DIVERGED,
        reason="val_bpb is nan",
        metrics={"val_bpb": float("nan"), "training_seconds": 2.5, "num_steps": 12},
        wall_seconds=4.2,
        log_path="/tmp/x/run.log",
        error_tail="loss nan",
        returncode=0,
        depth=2,
        budget=3.0,
        seed=1,
        profile="tiny",
        devices=("0", "1"),
        data_fingerprint="abc",
        torch_version="2.13.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        commit="f" * 40,
    )
    return RunResult(**{**fields, **changes})


def test_a_result_survives_strict_json_storage_nan_included():
    result = _result()
    text = json.dumps(result.to_dict(), allow_nan=False)  # SQLite JSON columns reject NaN

    back = RunResult.from_dict(json.loads(text))

    assert back.status is Status.DIVERGED and back.devices == ("0", "1")
    assert math.isnan(back.val_bpb) and back.metrics["num_steps"] == 12
    assert back.to_dict() == result.to_dict()


def test_only_ok_is_a_success_and_statuses_read_as_their_names():
    assert [s for s in Status if s.is_success()] == [Status.OK]
    assert Status("timeout") is Status.TIMEOUT and str(Status.OOM) == "oom"
    assert not Status.TIMEOUT.is_finished() and Status.INVALID.is_finished()


def test_the_summary_block_is_the_last_one_in_the_log():
    log = "---\nval_bpb: 9.0\nstep 10 | loss 3.2\n---\nval_bpb: 1.234567\ntraining_seconds: 2.5\nnoise line\n"
    assert parse_summary(log) == {"val_bpb": "1.234567", "training_seconds": "2.5"}
    assert parse_summary("no block here") is None


def test_a_crash_reason_names_the_exception():
    log = (
        "Traceback (most recent call last):\n  File 'x'\ntorch.OutOfMemoryError: CUDA out of memory. Tried\n"
    )
    assert last_error(log) == "torch.OutOfMemoryError: CUDA out of memory. Tried"
    assert last_error("all fine\n") == ""
