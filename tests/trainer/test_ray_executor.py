"""RayExecutor against a real local Ray runtime: the executor contract, code shipping, lost workers.

Ray runs here on CPU with 3 logical GPUs declared (`num_gpus=3`): Ray's own GPU bookkeeping and
CUDA_VISIBLE_DEVICES assignment are real, but no CUDA kernel runs (the contract's scripts only
sleep and record where they ran; real training goes to CPU tasks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_executor import ExecutorContract
from trainer_support import SCRIPTS, alive, private_ray

from trainer import Job, RayExecutor, Status, TrainerError
from trainer.ray_executor import node_data, pack, unpack

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_runtime():
    with private_ray():
        ray.init(num_cpus=2, num_gpus=3, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


@pytest.fixture
def executor(ray_runtime):
    """executor(devices) -> a RayExecutor with one slot per device: GPU tasks for indices, CPU tasks for "cpu"."""
    made: list[RayExecutor] = []

    def make(devices) -> RayExecutor:
        on_cpu = str(devices[0]) == "cpu"
        # GPU tasks ask for half a CPU, so three of them fit the runtime's two CPUs
        ex = RayExecutor(None, gpus_per_task=0 if on_cpu else 1, cpus_per_task=1 if on_cpu else 0.5,
                         slots=len(devices))  # fmt: skip
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown()


class TestRayExecutor(ExecutorContract):
    @pytest.fixture
    def jobs(self, tmp_path, tiny_data, prepare_copy):
        """The contract's jobs, but marks go to one folder the scripts may write (`Job.writable`):
        on Ray, train.py runs in the node's own checkout, so marks in the worktree never reach us."""
        marks = tmp_path / "marks"
        marks.mkdir()
        made = iter(range(10**6))

        barrier = tmp_path / "barrier"
        barrier.mkdir()

        def make(
            n: int, script: str = "sleeper", sleep: float = 1.0, together: int = 0, **fields
        ) -> list[Job]:
            out = []
            for _ in range(n):
                i = next(made)
                tree = tmp_path / f"{script}-{i}"
                tree.mkdir()
                shutil.copy(SCRIPTS / f"{script}.py", tree / "train.py")
                env = {"MARK_DIR": str(marks), "SLEEP": str(sleep), "PYTHONPATH": str(prepare_copy.parent),
                       "BARRIER_DIR": str(barrier), "BARRIER_N": str(together)}  # fmt: skip
                out.append(Job(worktree=tree, depth=2, budget=2048, seed=i, profile="tiny", data_dir=tiny_data,
                               log_dir=tmp_path / f"logs-{script}-{i}", extra_env=env, allowance=30.0,
                               writable=(marks, barrier), **fields))  # fmt: skip
            return out

        make.trees = [marks]
        return make


def _git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository whose committed train.py is a real tiny training run."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "--quiet")
    shutil.copy(SCRIPTS / "ok.py", root / "train.py")
    _git(root, "add", "train.py")
    _git(root, "commit", "--quiet", "-m", "baseline")
    return root


def test_a_commit_is_rebuilt_from_a_bundle_and_trained_on_the_node(
    executor, repo, tiny_data, prepare_copy, tmp_path
):
    sha = _git(repo, "rev-parse", "HEAD")
    job = Job(worktree=repo, depth=2, budget=4096, seed=3, profile="tiny", data_dir=tiny_data,
              log_dir=tmp_path / "logs", allowance=30.0, extra_env={"PYTHONPATH": str(prepare_copy.parent)})  # fmt: skip
    with executor(("cpu",)) as ex:
        result = ex.submit(job).result(timeout=180)
    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert result.commit == sha and result.val_bpb is not None and result.extra["node"]
    log = Path(result.log_path).read_text()
    assert result.log_path == str(tmp_path / "logs" / "run.log")  # the node's log lands on the head
    first = log.splitlines()[0]
    assert " in " in first and str(repo) not in first  # trained in the node's own checkout


def test_uncommitted_changes_are_refused_at_submit(executor, repo, tiny_data, tmp_path):
    (repo / "train.py").write_text("print('edited')\n")
    job = Job(worktree=repo, depth=2, budget=2.0, seed=3, profile="tiny", data_dir=tiny_data)
    with executor(("cpu",)) as ex, pytest.raises(TrainerError, match="uncommitted changes"):
        ex.submit(job)


def test_pack_and_unpack_round_trip_a_commit_and_a_plain_folder(repo, tmp_path):
    sha = _git(repo, "rev-parse", "HEAD")
    rebuilt = unpack(pack(repo), tmp_path / "a" / "tree")
    assert _git(rebuilt, "rev-parse", "HEAD") == sha
    assert (rebuilt / "train.py").read_bytes() == (repo / "train.py").read_bytes()
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "sub" / "x.txt").write_text("x")
    package = pack(plain)
    assert package.kind == "tar" and package.commit is None
    assert (unpack(package, tmp_path / "b" / "tree") / "sub" / "x.txt").read_text() == "x"


def test_a_node_with_other_data_fails_clearly(tiny_data, monkeypatch, tmp_path):
    fingerprint = json.loads((tiny_data / "manifest.json").read_text())["fingerprint"]
    assert node_data(str(tiny_data), "tiny", "builtin", fingerprint) == tiny_data
    with pytest.raises(TrainerError, match=r"fingerprint .*`evolve prepare --profile tiny --source builtin`"):
        node_data(str(tiny_data), "tiny", "builtin", "0" * 64)
    # the head's path is missing on this node: its own `evolve prepare` output is used instead
    monkeypatch.setenv("EVOLVE_HOME", str(tiny_data.parent.parent))
    assert node_data(str(tmp_path / "elsewhere"), "tiny", "builtin", fingerprint) == tiny_data
    monkeypatch.setenv("EVOLVE_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(TrainerError, match="no prepared data"):
        node_data(str(tmp_path / "elsewhere"), "tiny", "builtin", fingerprint)


ATTEMPT = '''"""Marks each attempt, sleeps, and trains nothing (the untrained bigram is scored)."""
import json, os, time, uuid
import prepare
cfg = prepare.run_config()
with open(os.path.join(os.environ["MARK_DIR"], f"attempt-{uuid.uuid4().hex}.json"), "w") as f:
    json.dump({"seed": cfg.seed}, f)
time.sleep(float(os.environ["SLEEP"]))
import torch
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass
'''


def _host_run(marks: Path) -> dict:
    """The host's view of the sandboxed run whose environment names `marks` (pids inside the sandbox
    are its own): bubblewrap's pid, its parent (the Ray worker) and the task's folder on the node."""
    needle = f"MARK_DIR={marks}".encode()
    for _ in range(100):
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path("/proc", entry, "environ").read_bytes().split(b"\0")
                cmd = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")[0]
                if needle in environ and cmd.endswith(b"bwrap"):
                    parent = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
                    cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
                    task = next(p for p in cwd.parents if p.name.startswith("evolve-ray-"))
                    return {"pid": int(entry), "worker": parent, "task": str(task)}
            except (OSError, StopIteration, IndexError, ValueError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no sandboxed run with {needle!r} found")


def test_a_killed_worker_is_retried_elsewhere_and_the_job_returns_once(
    executor, tiny_data, prepare_copy, tmp_path
):
    tree, marks = tmp_path / "tree", tmp_path / "marks"
    tree.mkdir()
    marks.mkdir()
    (tree / "train.py").write_text(ATTEMPT)
    env = {"MARK_DIR": str(marks), "SLEEP": "4", "PYTHONPATH": str(prepare_copy.parent)}
    job = Job(worktree=tree, depth=2, budget=2048, seed=1, profile="tiny", data_dir=tiny_data,
              log_dir=tmp_path / "logs", extra_env=env, allowance=30.0, writable=(marks,))  # fmt: skip
    with executor(("cpu",)) as ex:
        future = ex.submit(job)
        deadline = time.time() + 120
        while not list(marks.iterdir()) and time.time() < deadline:
            time.sleep(0.2)
        first = _host_run(marks)
        os.kill(first["worker"], signal.SIGKILL)  # the worker dies mid-run, as with a lost node
        result = future.result(timeout=180)
    assert result.status is Status.OK, (result.reason, result.error_tail)
    assert len(list(marks.iterdir())) == 2  # two attempts, one answer
    for _ in range(100):  # the sandbox died with its worker, and the reaper ...
        if not alive(first["pid"]) and not Path(first["task"]).exists():
            break
        time.sleep(0.1)
    assert not alive(first["pid"])
    assert not Path(first["task"]).exists()  # ... removed its checkout and logs
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run.log"]


def test_refuses_a_cluster_without_enough_gpus_for_one_task(ray_runtime):
    with pytest.raises(TrainerError, match="no GPUs"):
        RayExecutor(None, gpus_per_task=8)


def test_abandon_cancels_the_runs_in_flight_at_once(executor, tiny_data, prepare_copy, tmp_path):
    tree, marks = tmp_path / "tree", tmp_path / "marks"
    tree.mkdir()
    marks.mkdir()
    (tree / "train.py").write_text(ATTEMPT)
    env = {"MARK_DIR": str(marks), "SLEEP": "60", "PYTHONPATH": str(prepare_copy.parent)}
    job = Job(worktree=tree, depth=2, budget=2048, seed=1, profile="tiny", data_dir=tiny_data,
              extra_env=env, allowance=30.0, writable=(marks,))  # fmt: skip
    with executor(("cpu",)) as ex:
        future = ex.submit(job)
        deadline = time.time() + 120
        while not list(marks.iterdir()) and time.time() < deadline:
            time.sleep(0.2)
        mark = _host_run(marks)
        started = time.time()
        ex.abandon()  # what a second Ctrl-C of `evolve run` does
        result = future.result(timeout=30)
        assert time.time() - started < 20
        later = ex.submit(dataclasses.replace(job, extra_env={**env, "SLEEP": "0"}, seed=2))
        assert later.result(timeout=120).status is Status.OK  # the executor goes on
    assert result.status is Status.CRASH and "abandoned" in result.reason
    assert not alive(mark["pid"])
    assert not Path(mark["task"]).exists()  # its folder on the node is gone by the next task


def test_evolve_run_with_the_ray_executor_records_each_run_once(ray_runtime, use_tiny_data, tmp_path):
    from click.testing import CliRunner

    from evolve.cli import main
    from evolve.store import Store
    from genome.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", "r", profile="tiny", source="builtin", budget=4096)
    args = ["run", "-w", str(ws.root), "--executor", "ray", "--address", "auto", "--max-experiments", "2",
            "--baseline-seeds", "2", "--max-seeds", "2", "--operators", "optuna_tweak", "--interval", "5"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        evaluations = [e for i in store.individuals("r") for e in store.evaluations(i.id)]
        evaluated = store.events("r", kind="evaluated")
    assert len(evaluations) == len(evaluated) >= 4  # 2 baseline seeds + 2 children, one row each
    assert all(e.status == "ok" for e in evaluations), [e.reason for e in evaluations]
    refused = CliRunner().invoke(main, [*args[:5], "--gpus", "0"])
    assert refused.exit_code == 1 and "with --executor ray" in refused.output
