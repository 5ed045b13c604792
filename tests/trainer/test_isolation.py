"""What a run cannot do: see secrets, outlive its run, fill the disk, or change prepare or the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trainer_support import alive

import trainer
from trainer import Status
from trainer.env import build_env

SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai",
    "HF_TOKEN": "hf_test",
    "AWS_SECRET_ACCESS_KEY": "aws-test",
    "MY_PASSWORD": "hunter2",
    "GITHUB_TOKEN": "ghp_test",
    "ANTHROPIC_BASE_URL": "https://example.invalid",
    "TORCH_HUB_AUTH_TOKEN": "allowed-prefix-but-a-token",
    "NCCL_IB_PASSWORD": "allowed-prefix-but-a-password",
}


def test_no_secret_reaches_train_py(run_script, monkeypatch, tmp_path):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_UNRELATED_SETTING", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    dump = tmp_path / "env.json"

    result = run_script("envdump", depth=3, seed=11, extra_env={"DUMP_PATH": str(dump)}, writable=[tmp_path])

    assert result.status is Status.OK, result.reason
    seen = json.loads(dump.read_text())
    before, initial = seen["environ"], seen["initial"]
    text = json.dumps(seen)
    for name, value in SECRETS.items():
        assert name not in before and value not in text
    assert "SOME_UNRELATED_SETTING" not in before
    # what training needs does arrive
    assert before["OMP_NUM_THREADS"] == "1" and before["NCCL_NVLS_ENABLE"] == "0"
    assert before["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert before["PATH"] and before["PYTHONUNBUFFERED"] == "1"
    assert (before["EVOLVE_DEPTH"], before["EVOLVE_SEED"], before["EVOLVE_PROFILE"]) == ("3", "11", "tiny")
    assert before["EVOLVE_DEVICE"] == "cpu" and before["CUDA_VISIBLE_DEVICES"] == ""
    # the signing key comes through a pipe that prepare read before train.py started: neither the
    # environment nor the process's initial environment in /proc/self/environ holds it
    assert not any(name.startswith("EVOLVE_RESULT_KEY") for name in before)
    assert [e for e in initial if e.startswith("EVOLVE_RESULT_KEY")] == [
        e for e in initial if e.startswith("EVOLVE_RESULT_KEY_FD=") and e.split("=", 1)[1].isdigit()
    ]
    assert Path(before["EVOLVE_RESULT"]).parent == Path(result.log_path).parent  # outside the worktree


def test_a_secret_cannot_be_smuggled_through_extra_env(run_script):
    with pytest.raises(trainer.TrainerError, match="looks like a secret"):
        run_script("envdump", extra_env={"WANDB_API_KEY": "x"})


def test_gpu_devices_become_cuda_visible_devices():
    env = build_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "7"}, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}


def test_nothing_the_run_started_outlives_it(run_script, tmp_path):
    pid_path = tmp_path / "pids"

    result = run_script("grandchild", extra_env={"PID_PATH": str(pid_path)}, writable=[tmp_path])

    assert result.status is Status.OK, result.reason
    pids = [int(p) for p in pid_path.read_text().split()]
    assert len(pids) == 2  # one in the run's process group, one that left it with setsid
    assert not any(alive(pid) for pid in pids)


def test_a_flood_of_output_is_capped_in_the_log(run_script):
    result = run_script("spam", extra_env={"SPAM_MB": "40"}, log_limit=2**20)

    log = Path(result.log_path)
    assert log.stat().st_size < 2**20 + 4096
    assert result.extra["output_bytes"] > 40 * 2**20 and result.extra["log_truncated"]
    assert "log capped" in log.read_text()
    assert "the end of the spam" in result.error_tail  # the real end is still seen
    assert result.status is Status.INVALID  # it exited 0 without a result


def test_editing_the_prepare_it_imports_makes_the_run_invalid(run_script, prepare_copy):
    import prepare

    result = run_script("tamper")

    assert result.status is Status.INVALID
    assert "prepare package" in result.reason and "changed during the run" in result.reason
    assert "# a better metric" in (prepare_copy / "metric.py").read_text()
    assert "# a better metric" not in (Path(prepare.__file__).parent / "metric.py").read_text()


def test_touching_the_prepared_data_makes_the_run_invalid(run_script, tiny_data, tmp_path):
    data = tmp_path / "data-copy"
    shutil.copytree(tiny_data, data)

    result = run_script("tamper_data", data_dir=data)

    assert result.status is Status.INVALID
    assert "prepared data" in result.reason


def test_a_prepare_inside_the_worktree_is_refused_unrun(worktree_with, tiny_data, tmp_path):
    import prepare

    tree = worktree_with("ok")
    shutil.copytree(Path(prepare.__file__).parent, tree / "prepare")

    result = trainer.run(
        tree, depth=2, budget=1, seed=0, profile="tiny", data_dir=tiny_data, log_dir=tmp_path / "l"
    )

    assert result.status is Status.INVALID
    assert "inside its worktree" in result.reason and result.wall_seconds == 0.0
