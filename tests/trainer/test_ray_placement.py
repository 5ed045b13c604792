"""RayExecutor on a real two-node Ray cluster (`ray.cluster_utils.Cluster`, both nodes on this host):
under a time budget it pins one device model, under a token budget it uses every node.

The nodes carry the resources Ray gives GPU nodes (`accelerator_type:<MODEL>`) and declared GPUs:
Ray's placement is real, no CUDA kernel runs (the contract's sleeper script only sleeps).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from trainer_support import SCRIPTS, private_ray

from trainer import Job, RayExecutor, TrainerError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A head with 2 "H200" GPUs and a node with 1 "A100"; yields (head's node id, A100 node's id)."""
    from ray.cluster_utils import Cluster

    with private_ray():
        made = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "num_gpus": 2, "resources": {"accelerator_type:H200": 1},
                            "include_dashboard": False},
        )  # fmt: skip
        a100 = made.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A100": 1})
        ray.init(address=made.address, log_to_driver=False)
        made.wait_for_nodes()
        yield made.head_node.node_id, a100.node_id
        ray.shutdown()
        made.shutdown()


@pytest.fixture
def jobs(tmp_path, tiny_data, prepare_copy):
    def make(n: int, together: int = 0, **fields) -> list[Job]:
        barrier = tmp_path / f"barrier-{n}-{together}"
        barrier.mkdir()
        out = []
        for i in range(n):
            tree = tmp_path / f"tree-{barrier.name}-{i}"
            tree.mkdir()
            shutil.copy(SCRIPTS / "sleeper.py", tree / "train.py")
            env = {"MARK_DIR": str(barrier), "SLEEP": "0.2", "PYTHONPATH": str(prepare_copy.parent),
                   "BARRIER_DIR": str(barrier), "BARRIER_N": str(together)}  # fmt: skip
            out.append(Job(worktree=tree, depth=2, budget=2048, seed=i, profile="tiny", data_dir=tiny_data,
                           extra_env=env, allowance=30.0, writable=(barrier,), **fields))  # fmt: skip
        return out

    return make


def test_a_time_budget_pins_the_model_with_the_most_gpus_and_leaves_the_other_idle(cluster, jobs):
    h200, _ = cluster
    with RayExecutor(None, gpus_per_task=1, cpus_per_task=0.25, budget_unit="seconds") as ex:
        assert ex.pinned == "H200" and ex.slots == 2 and ex.device_models == ("H200",)
        assert ex.placement == (
            "time budget: pinned to H200 (2 GPUs); 1 A100 GPUs left idle: a time budget's scores compare "
            "only on one device model"
        )
        assert ex.matches_model("NVIDIA H200") and not ex.matches_model("NVIDIA A100-SXM4-80GB")
        timed = [dataclasses.replace(j, budget=5.0, budget_unit="seconds") for j in jobs(3)]
        results = [f.result(timeout=300) for f in [ex.submit(j) for j in timed]]
    assert [r.extra["node_id"] for r in results] == [h200] * 3, [r.reason for r in results]


def test_a_token_budget_uses_every_node(cluster, jobs):
    with RayExecutor(None, gpus_per_task=1, cpus_per_task=0.25, budget_unit="tokens") as ex:
        assert ex.pinned is None and ex.slots == 3 and "every node" in ex.placement
        # three runs that wait for each other: they are on the three GPUs at once, so on both nodes
        results = [f.result(timeout=300) for f in [ex.submit(j) for j in jobs(3, together=3)]]
        assert all(r.ok for r in results), [(r.reason, r.error_tail) for r in results]
        assert {r.extra["node_id"] for r in results} == set(cluster)
        with pytest.raises(TrainerError, match="would mix device models"):
            ex.submit(dataclasses.replace(jobs(1)[0], budget=5.0, budget_unit="seconds"))


def test_the_user_names_the_model_or_hears_which_there_are(cluster):
    with RayExecutor(
        None, gpus_per_task=1, cpus_per_task=0.25, budget_unit="seconds", accelerator_type="A100"
    ) as ex:
        assert ex.pinned == "A100" and ex.slots == 1 and "2 H200 GPUs left idle" in ex.placement
    with pytest.raises(
        TrainerError, match=r"no Ray node has accelerator_type 'V100'; .*A100 \(1 GPUs\), H200 \(2 GPUs\)"
    ):
        RayExecutor(None, gpus_per_task=1, budget_unit="seconds", accelerator_type="V100")


def test_a_time_budget_on_cpus_refuses_a_node_with_another_cpu_model(cluster, jobs, monkeypatch):
    from trainer.ray_executor import run_on_node
    from trainer.runner import cpu_name

    with RayExecutor(None, gpus_per_task=0, cpus_per_task=0.25, budget_unit="seconds") as ex:
        assert ex.pinned == cpu_name() and f"pinned to the head's CPU model {cpu_name()!r}" in ex.placement
        spec = ex._spec(jobs(1)[0])
    assert spec["cpu_model"] == cpu_name()
    with pytest.raises(
        TrainerError, match=r"node .* has CPU .*pinned to 'Other CPU 9000'; .*take that node out"
    ):
        run_on_node(None, {**spec, "cpu_model": "Other CPU 9000"})
