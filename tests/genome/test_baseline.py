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

from genome.baseline import BASELINE

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = [
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
]


def _run(workdir: Path, data: Path, budget: float, depth: int | None = None, edits: dict | None = None):
    """Copy the baseline into `workdir`, `edits` (name -> source text) applied to its constants, and run it."""
    workdir.mkdir(parents=True)
    source = BASELINE.read_text()
    for name, value in (edits or {}).items():
        source, n = re.subn(rf"^{name} = .*?(  #.*)?$", f"{name} = {value}\\1", source, count=1, flags=re.M)
        assert n == 1, name
    (workdir / "train.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env.update(
        EVOLVE_HOME=str(workdir / "home"),
        EVOLVE_PROFILE="tiny",
        EVOLVE_DATA=str(data),
        EVOLVE_TIME_BUDGET=str(budget),
        EVOLVE_SEED="7",
        EVOLVE_RESULT=str(workdir / "result.json"),
        # One thread, like one CPU slot: on a shared machine, OpenMP threads that spin-wait for a
        # busy core make a two-thread run up to 10x slower than a one-thread run.
        OMP_NUM_THREADS="1",
    )
    if depth is not None:
        env["EVOLVE_DEPTH"] = str(depth)
    proc = subprocess.run(
        [sys.executable, "train.py"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    return proc


def _summary(stdout: str) -> dict[str, str]:
    block = stdout.rsplit("\n---\n", 1)[1]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


@dataclass(frozen=True)
class Run:
    stdout: str
    summary: dict[str, str]
    result: dict


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    """runs(budget, depth=None, **edits) -> Run; each distinct run happens once per module."""
    done: dict = {}

    def get(budget: float, depth: int | None = None, **edits) -> Run:
        key = (budget, depth, tuple(sorted(edits.items())))
        if key not in done:
            workdir = tmp_path_factory.mktemp("run") / "tree"
            proc = _run(workdir, tiny_data, budget, depth, edits)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            result = json.loads((workdir / "result.json").read_text())
            done[key] = Run(proc.stdout, _summary(proc.stdout), result)
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
    summary = runs(3.0).summary
    assert list(summary) == SUMMARY_KEYS  # the summary is the very last thing printed
    bpb = float(summary["val_bpb"])
    assert math.isfinite(bpb)
    assert bpb < 0.8 * _uniform_bpb(tiny_data)
    assert int(summary["depth"]) == 2 and int(summary["num_steps"]) > 0
    # It stops when one more step would overrun the budget; the trainer's judge allows 2% + 0.25 s
    # for a last step slowed down by a busy machine.
    assert 0 < float(summary["training_seconds"]) <= 3.0 * 1.02 + 0.25
    assert float(summary["total_seconds"]) < 60


def test_the_result_file_matches_the_printed_summary(runs):
    run = runs(3.0)
    assert run.result["val_bpb"] == pytest.approx(float(run.summary["val_bpb"]), abs=1e-6)
    assert run.result["num_steps"] == int(run.summary["num_steps"])
    assert run.result["config"] == {
        "depth": 2,
        "time_budget": 3.0,
        "seed": 7,
        "profile": "tiny",
        "world_size": 1,
    }


def test_a_longer_budget_gives_a_lower_val_bpb(runs):
    short, long = runs(3.0).summary, runs(9.0).summary
    assert int(long["num_steps"]) > int(short["num_steps"])
    assert float(long["val_bpb"]) < float(short["val_bpb"]) - 0.05


def test_evolve_depth_scales_the_model(runs):
    base, deeper = runs(3.0), runs(1.5, depth=3)
    assert deeper.summary["depth"] == "3"
    assert float(deeper.summary["num_params_M"]) > float(base.summary["num_params_M"])
    assert "depth 3 | dim 256 | heads 2" in deeper.stdout  # width follows depth, rounded up to HEAD_DIM


def test_window_and_value_embedding_knobs_change_the_model_and_still_train(runs):
    knobs = runs(1.5, WINDOW_PATTERN='"SL"', SHORT_WINDOW="64", VALUE_EMBEDS="False")
    assert "value-embed layers []" in knobs.stdout
    assert float(knobs.summary["num_params_M"]) < float(runs(3.0).summary["num_params_M"])
    assert math.isfinite(float(knobs.summary["val_bpb"]))


def test_a_nan_loss_stops_the_run_as_diverged(tmp_path, tiny_data):
    # a long budget: the run must stop by itself at the first NaN, not at the clock
    proc = _run(tmp_path / "run", tiny_data, 60.0, edits={"EMBEDDING_LR": "1e309"})  # an infinite lr
    assert proc.returncode == 86
    assert re.search(r"^DIVERGED: loss nan at step \d+", proc.stdout, re.M)
    assert "val_bpb:" not in proc.stdout


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
    cmd += ["--depths", "2", "--budget", "1.5", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLVE_")}
    env.update(EVOLVE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["depth"] == 2 and row["tokens_per_s"] > 0
    assert row["wall_s"] >= row["training_s"] > 0 and math.isfinite(row["val_bpb"])
    assert "| run | depth | params (M) | tokens/s |" in proc.stdout
    assert doc["matmul_tflops"] > 0 and doc["card"] == "cpu"
