"""Several processes per run: torchrun with 2 CPU processes (gloo), judged like a single process."""

from __future__ import annotations

from pathlib import Path

from trainer_support import alive

from trainer import Status


def test_two_cpu_processes_under_torchrun_all_reduce_and_report(run_script):
    result = run_script("ddp", devices=("cpu", "cpu"), budget=20.0)

    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert result.devices == ("cpu", "cpu")
    assert result.metrics["world"] == 2 and result.metrics["ranks"] == 3.0  # 1 + 2, summed across ranks
    assert 0 < result.val_bpb < 20  # scored by both ranks together, signed by rank 0
    assert "torch.distributed.run" in Path(result.log_path).read_text().splitlines()[0]


def test_a_torchrun_run_that_overstays_is_killed_workers_and_all(run_script, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()

    result = run_script(
        "ddp_hang",
        devices=("cpu", "cpu"),
        budget=1.0,
        allowance=4.0,
        grace=1.0,
        extra_env={"PID_DIR": str(pid_dir)},
        writable=[pid_dir],
    )

    assert result.status is Status.TIMEOUT
    pids = [int(p.read_text()) for p in pid_dir.iterdir()]
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
