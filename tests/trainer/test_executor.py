"""Executors: the contract every implementation must pass, run here against LocalExecutor."""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import Future

import pytest
from trainer_support import SCRIPTS

from trainer import Executor, Job, LocalExecutor, RunResult, Status, TrainerError


def _overlap(a: dict, b: dict) -> bool:
    """Were the two runs alive at once? (Two runs that met at the sleeper's barrier always were.)"""
    return a["start"] < b["end"] and b["start"] < a["end"]


class ExecutorContract:
    """Subclass it with an `executor` fixture: a factory `executor(devices) -> Executor`."""

    @pytest.fixture
    def jobs(self, tmp_path, tiny_data, prepare_copy):
        """jobs(n, script="sleeper", **job_fields) -> n Jobs on fresh worktrees; each leaves its marks
        in a folder of its own that the job may write (`Job.writable`: a run works on a copy of its
        worktree, which goes away with it). The budget is one batch of tokens. With `together=k`,
        each run first waits at a barrier until k runs have reached it (scripts/sleeper.py): a run
        that is never joined fails, so an executor that does not run k at once fails the test."""
        trees = []

        made = iter(range(10**6))

        barrier = tmp_path / "barrier"
        barrier.mkdir()

        def make(
            n: int, script: str = "sleeper", sleep: float = 1.0, together: int = 0, **fields
        ) -> list[Job]:
            out = []
            for _ in range(n):
                i = next(made)  # also the seed, so every job's mark file is its own
                tree, marks = tmp_path / f"{script}-{i}", tmp_path / f"marks-{i}"
                tree.mkdir()
                marks.mkdir()
                shutil.copy(SCRIPTS / f"{script}.py", tree / "train.py")
                trees.append(marks)
                env = {"MARK_DIR": str(marks), "SLEEP": str(sleep), "PYTHONPATH": str(prepare_copy.parent),
                       "BARRIER_DIR": str(barrier), "BARRIER_N": str(together)}  # fmt: skip
                out.append(
                    Job(
                        worktree=tree,
                        depth=2,
                        budget=2048,
                        seed=i,
                        profile="tiny",
                        data_dir=tiny_data,
                        log_dir=tmp_path / f"logs-{script}-{i}",
                        extra_env=env,
                        allowance=30.0,
                        writable=(marks, barrier),
                        **fields,
                    )
                )
            return out

        make.trees = trees
        return make

    def _marks(self, jobs) -> list[dict]:
        return [json.loads(p.read_text()) for tree in jobs.trees for p in sorted(tree.glob("*.json"))]

    def test_a_job_comes_back_as_a_future_run_result(self, executor, jobs):
        with executor(("cpu",)) as ex:
            future = ex.submit(jobs(1, sleep=0.1)[0])
            assert isinstance(future, Future)
            result = future.result(timeout=60)
        assert isinstance(result, RunResult) and result.status is Status.OK, result.reason

    def test_runs_as_many_jobs_at_once_as_it_has_slots_and_no_more(self, executor, jobs):
        with executor(("cpu", "cpu")) as ex:
            assert ex.slots == 2
            results = [f.result(timeout=300) for f in [ex.submit(j) for j in jobs(4, together=2)]]
        # the first two met at the barrier: two at once (a run left alone there fails)
        assert all(r.status is Status.OK for r in results), [(r.reason, r.error_tail) for r in results]
        marks = self._marks(jobs)
        assert len(marks) == 4
        most = max(sum(_overlap(m, other) for other in marks) for m in marks)  # itself included
        assert most == 2  # at least the two that met; never a third beside them

    def test_never_gives_one_device_to_two_jobs(self, executor, jobs):
        with executor((0, 1)) as ex:
            results = [f.result(timeout=300) for f in [ex.submit(j) for j in jobs(4, together=2)]]
        assert all(r.status is Status.OK for r in results), [(r.reason, r.error_tail) for r in results]
        marks = self._marks(jobs)
        assert {m["cuda"] for m in marks} <= {"0", "1"} and all(m["device"] == "cuda" for m in marks)
        pairs = [(a, b) for i, a in enumerate(marks) for b in marks[i + 1 :] if _overlap(a, b)]
        assert pairs  # the two that met at the barrier: the check below has something to check
        assert all(a["cuda"] != b["cuda"] for a, b in pairs)
        assert sorted(r.devices for r in results) == sorted((m["cuda"],) for m in marks)

    def test_a_job_may_take_several_devices_at_once(self, executor, jobs):
        pair, single = jobs(2, sleep=1.0, together=2)  # both at once: the barrier counts runs, not ranks
        with executor((0, 1, 2)) as ex:
            big = ex.submit(dataclasses.replace(pair, gpus_per_run=2))
            small = ex.submit(single)
            big_result, small_result = big.result(timeout=120), small.result(timeout=120)
        assert big_result.status is Status.OK, big_result.reason
        assert small_result.status is Status.OK, small_result.reason
        assert len(big_result.devices) == 2 and len(small_result.devices) == 1
        assert not set(big_result.devices) & set(small_result.devices)

    def test_a_failed_run_is_a_result_not_an_exception(self, executor, jobs):
        with executor(("cpu",)) as ex:
            result = ex.submit(jobs(1, script="crash_name")[0]).result(timeout=60)
        assert result.status is Status.CRASH

    def test_refuses_jobs_it_cannot_run(self, executor, jobs):
        ex = executor(("cpu",))
        job = jobs(1)[0]
        with pytest.raises(TrainerError, match="asks for 2 devices"):
            ex.submit(dataclasses.replace(job, gpus_per_run=2))
        ex.shutdown()
        with pytest.raises(TrainerError, match="shut down"):
            ex.submit(job)


class TestLocalExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self):
        made: list[Executor] = []

        def make(devices) -> Executor:
            ex = LocalExecutor(devices)
            made.append(ex)
            return ex

        yield make
        for ex in made:
            ex.shutdown()


def test_local_executor_slots_follow_its_devices():
    assert LocalExecutor.cpu(3).slots == 3
    assert LocalExecutor((0, 1)).devices == ("0", "1")
    with pytest.raises(TrainerError, match="twice"):
        LocalExecutor((0, 0))


def test_cpu_slots_share_the_cores_instead_of_each_taking_all(tmp_path, monkeypatch):
    """Plumbing only: a runner that records its environment stands in for training."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []

    def runner(worktree, **kw):
        seen.append(kw["extra_env"])
        none = dict.fromkeys(
            (
                "wall_seconds",
                "log_path",
                "error_tail",
                "returncode",
                "depth",
                "budget",
                "seed",
                "profile",
                "data_fingerprint",
                "torch_version",
                "gpu_name",
                "commit",
            )
        )
        return RunResult.from_dict({**none, "status": "crash", "reason": "recorded"})

    with LocalExecutor(("cpu", "cpu"), runner=runner) as ex:
        ex.submit(Job(tmp_path, depth=1, budget=1, seed=0)).result()
        ex.submit(Job(tmp_path, depth=1, budget=1, seed=0, extra_env={"OMP_NUM_THREADS": "7"})).result()
    import os

    assert seen[0]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert seen[1]["OMP_NUM_THREADS"] == "7"  # the job's own setting wins
