"""Several processes per run: torchrun with 2 CPU processes (gloo), served and judged like one."""

from __future__ import annotations

from pathlib import Path

from trainer_support import beating

from trainer import Status


def test_two_cpu_processes_under_torchrun_train_in_lockstep_and_rank_0_is_scored(run_script):
    result = run_script("ddp", devices=("cpu", "cpu"), budget=16384)

    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert result.devices == ("cpu", "cpu")
    assert result.metrics["world"] == 2 and result.metrics["ranks"] == 3.0  # 1 + 2, summed across ranks
    # 16384 tokens are 8 batches of 8 x 256 over both ranks: 4 each, 2 steps of 2 batches
    assert result.metrics["batches_all_ranks"] == 8.0 and result.metrics["num_steps"] == 2
    assert 0 < result.val_bpb < 20
    assert "torch.distributed.run" in Path(result.log_path).read_text().splitlines()[0]


def test_a_torchrun_run_that_overstays_is_killed_workers_and_all(run_script, tmp_path):
    beat = tmp_path / "beat"
    beat.mkdir()

    result = run_script(
        "ddp_hang",
        devices=("cpu", "cpu"),
        budget=1.0,
        budget_unit="seconds",
        allowance=4.0,
        window_limit=1.0,
        exit_grace=1.0,
        grace=1.0,
        extra_env={"BEAT_DIR": str(beat)},
        writable=[beat],
    )

    assert result.status is Status.TIMEOUT
    assert sorted(p.name for p in beat.iterdir()) == ["0", "1"]
    assert beating(beat) == []
