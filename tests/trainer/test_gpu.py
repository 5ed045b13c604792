"""The real baseline judged on CUDA: compile caches, the sandbox and torchrun (run on the device machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import trainer
from genome.baseline import BASELINE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _worktree(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(BASELINE, tree / "train.py")
    return tree


def test_the_baseline_compiles_trains_and_is_judged_ok_on_one_gpu(tmp_path, use_tiny_data):
    result = trainer.run(
        _worktree(tmp_path), depth=2, budget=65536, seed=1, devices=[0], profile="tiny",
        data_dir=use_tiny_data, log_dir=tmp_path / "log",
    )  # fmt: skip
    assert result.status is trainer.Status.OK, (result.reason, result.error_tail)
    assert result.metrics["peak_vram_mb"] > 0 and result.metrics["mfu_percent"] > 0
    assert result.gpu_name.startswith("NVIDIA")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_the_baseline_runs_under_torchrun_on_two_gpus(tmp_path, use_tiny_data):
    result = trainer.run(
        _worktree(tmp_path), depth=2, budget=65536, seed=1, devices=[0, 1], profile="tiny",
        data_dir=use_tiny_data, log_dir=tmp_path / "log",
    )  # fmt: skip
    assert result.status is trainer.Status.OK, (result.reason, result.error_tail)
    assert "device cuda x2" in Path(result.log_path).read_text()


def test_a_cold_and_a_warm_compile_cache_give_the_same_training_window(tmp_path, use_tiny_data, monkeypatch):
    """The window opens at the first real batch, after the compile on warm-up batches: a cold cache
    costs start-up time, never training (on the H200 the bench measured the same tokens to the batch)."""
    monkeypatch.setenv("EVOLVE_COMPILE_CACHE", str(tmp_path / "cache"))
    tree = _worktree(tmp_path)
    runs = [
        trainer.run(tree, depth=2, budget=10, budget_unit="seconds", seed=1, devices=[0], profile="tiny",
                    data_dir=use_tiny_data, log_dir=tmp_path / f"log{i}")
        for i in range(2)
    ]  # fmt: skip
    cold, warm = runs
    assert cold.ok and warm.ok, (cold.reason, warm.reason)
    assert (cold.extra["compile_cache"], warm.extra["compile_cache"]) == ("cold", "warm")
    a, b = cold.metrics["training_tokens"], warm.metrics["training_tokens"]
    assert abs(a - b) <= 0.02 * max(a, b)
    assert warm.wall_seconds < cold.wall_seconds
