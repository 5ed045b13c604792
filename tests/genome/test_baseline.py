"""The generation-0 train.py trains for real on CPU (tiny profile), reports a sane val_bpb, and keeps its knobs parseable."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import trainer
from genome.baseline import BASELINE

REPO = Path(__file__).resolve().parents[2]


def _source(edits: dict | None = None) -> str:
    source = BASELINE.read_text()
    for name, value in (edits or {}).items():
        source, n = re.subn(rf"^{name} = .*?(  #.*)?$", f"{name} = {value}\\1", source, count=1, flags=re.M)
        assert n == 1, name
    return source


@dataclass(frozen=True)
class Run:
    result: trainer.RunResult
    log: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    """runs(budget, depth=2, **edits) -> Run: the baseline (constants edited) through trainer.run,
    the budget in training tokens; each distinct run happens once per module."""
    done: dict = {}

    def get(budget: int, depth: int = 2, **edits) -> Run:
        key = (budget, depth, tuple(sorted(edits.items())))
        if key not in done:
            base = tmp_path_factory.mktemp("run")
            (base / "tree").mkdir()
            (base / "tree" / "train.py").write_text(_source(edits))
            result = trainer.run(
                base / "tree", depth=depth, budget=budget, seed=7, profile="tiny", data_dir=tiny_data,
                log_dir=base / "logs", extra_env={"OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            done[key] = Run(result, Path(result.log_path).read_text())
        return done[key]

    return get


def _uniform_bpb(data: Path) -> float:
    """Bits per byte of a model that guesses uniformly over the vocabulary, on the validation split."""
    import prepare

    token_bytes = prepare.load_tokenizer(data).token_bytes()
    val = np.memmap(data / "val.bin", dtype=np.uint16, mode="r")
    counted = token_bytes[val]
    bytes_per_token = counted.sum() / np.count_nonzero(counted)
    return math.log2(len(token_bytes)) / bytes_per_token


def test_a_short_cpu_run_ends_with_a_finite_val_bpb_well_under_uniform(runs, tiny_data):
    run = runs(16384)
    result = run.result
    assert result.status is trainer.Status.OK, (result.reason, result.error_tail)
    assert math.isfinite(result.val_bpb) and result.val_bpb < 0.9 * _uniform_bpb(tiny_data)
    # 16384 tokens at 4096 a step: exactly 4 steps, whatever the machine's load
    assert result.metrics["training_tokens"] == 16384 and result.metrics["num_steps"] == 4
    assert result.metrics["depth"] == 2 and result.extra["eval_probe_max_diff"] == 0.0
    summary = run.log.split("\n---\n")[1].split("\n\n")[0]  # train.py's own block, for humans
    assert [line.split(":")[0] for line in summary.splitlines()] == [
        "peak_vram_mb", "mfu_percent", "num_steps", "num_params_M", "depth",
    ]  # fmt: skip


def test_a_longer_budget_gives_a_lower_val_bpb(runs, tiny_data):
    short, long = runs(16384).result, runs(65536).result
    assert long.metrics["num_steps"] == 4 * short.metrics["num_steps"]
    assert long.val_bpb < short.val_bpb - 0.05
    assert long.val_bpb < 0.8 * _uniform_bpb(tiny_data)  # the profile's budget learns the data


def test_evolve_depth_scales_the_model(runs):
    base, deeper = runs(16384), runs(8192, depth=3)
    assert deeper.result.ok, deeper.result.reason
    assert deeper.result.metrics["num_params_M"] > base.result.metrics["num_params_M"]
    assert "depth 3 | dim 256 | heads 2" in deeper.log  # width follows depth, rounded up to HEAD_DIM


def test_window_and_value_embedding_knobs_change_the_model_and_still_train(runs):
    knobs = runs(8192, WINDOW_PATTERN='"SL"', SHORT_WINDOW="64", VALUE_EMBEDS="False")
    assert knobs.result.ok, knobs.result.reason
    assert "value-embed layers []" in knobs.log
    assert knobs.result.metrics["num_params_M"] < runs(16384).result.metrics["num_params_M"]
    assert knobs.result.extra["eval_probe_max_diff"] == 0.0  # the window is causal too


def test_a_nan_loss_stops_the_run_as_diverged(runs):
    # a long budget: the run must stop by itself at the first NaN, not at the end of its data
    run = runs(10**7, EMBEDDING_LR="1e309")  # an infinite lr
    assert run.result.status is trainer.Status.DIVERGED
    assert re.search(r"^DIVERGED: loss nan at step \d+", run.log, re.M)


def test_by_hand_it_trains_on_the_prepared_split_for_the_profiles_budget(tmp_path, tiny_data):
    """`python train.py` outside the harness: the loader reads the training split itself."""
    (tmp_path / "train.py").write_text(BASELINE.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env.update(EVOLVE_PROFILE="tiny", EVOLVE_DATA=str(tiny_data), EVOLVE_BUDGET="8192", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "budget 8192 tokens" in proc.stdout and "num_steps: 2" in proc.stdout


def test_the_hyperparameter_block_is_literal_constants():
    source = BASELINE.read_text()
    parts = re.split(r"^# =+\n# (.*)\n# =+\n", source, flags=re.M)  # preamble, title, body, title, ...
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    (title,) = [t for t in sections if t.startswith("HYPERPARAMETERS")]
    assert "meant to be edited" in title
    block = ast.parse(sections[title])
    assert len(block.body) >= 25
    constants = {}
    for node in block.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        name = node.targets[0].id
        assert name.isupper()
        constants[name] = ast.literal_eval(node.value)
        assert isinstance(constants[name], (int, float, bool, str, tuple))
    assert constants["ASPECT_RATIO"] == 64 and constants["HEAD_DIM"] == 128
    assert constants["LOGIT_SOFTCAP"] == 15
    for knob in ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR", "ADAM_BETAS", "WEIGHT_DECAY"):
        assert knob in constants
    for knob in ("WARMUP_FRAC", "WARMDOWN_FRAC", "FINAL_LR_FRAC", "TOTAL_BATCH_TOKENS", "DEVICE_BATCH_SIZE"):
        assert knob in constants
    # depth, budget, seed and device come only from prepare.run_config(), never from the environment
    assert "os.environ" not in source and "getenv" not in source
    assert "prepare.run_config()" in source


def test_the_throughput_bench_runs_on_cpu_with_the_tiny_profile(tmp_path, tiny_data):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "throughput.py"),
        "--profile",
        "tiny",
        "--data",
        str(tiny_data),
    ]
    cmd += ["--depths", "2", "--budget", "4096", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env.update(EVOLVE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["depth"] == 2 and row["tokens_per_s"] > 0
    assert row["wall_s"] >= row["training_s"] > 0 and math.isfinite(row["val_bpb"])
    assert "| run | depth | params (M) | tokens/s |" in proc.stdout
    assert doc["matmul_tflops"] > 0 and doc["card"] == "cpu"
