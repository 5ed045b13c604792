"""The real generation-0 train.py, run and judged by the trainer exactly as the search will run it."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import genome.baseline
import trainer
from trainer import Status

BASELINE = Path(genome.baseline.__path__[0]) / "train.py"


def _git(tree: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True).stdout.strip()


def test_the_baseline_trains_and_is_judged_ok_with_its_commit(tmp_path, tiny_data, prepare_copy):
    tree = tmp_path / "workspace"
    tree.mkdir()
    shutil.copy(BASELINE, tree / "train.py")
    _git(tree, "init", "-q")
    _git(tree, "add", "train.py")
    _git(tree, "commit", "-q", "-m", "generation 0")

    result = trainer.run(
        tree,
        depth=2,
        budget=16384,
        seed=0,
        profile="tiny",
        data_dir=tiny_data,
        log_dir=tmp_path / "logs",
        extra_env={"PYTHONPATH": str(prepare_copy.parent)},
    )

    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert math.isfinite(result.val_bpb) and result.val_bpb > 0
    assert result.metrics["depth"] == 2 and result.metrics["num_steps"] == 4  # 16384 tokens, 4096 a step
    assert result.metrics["training_tokens"] == 16384 and result.extra["eval_probe_max_diff"] == 0.0
    assert result.commit == _git(tree, "rev-parse", "HEAD")
