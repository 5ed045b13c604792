"""A small but realistic run for the analysis tests: a real workspace, real commits, a real store.

The individuals are real git commits made with genome's functions (hyperparameter tweaks, an
edit, a clean merge crossover); their scores are written through the Store API as the engine
would, with made-up val_bpb values, so the expected deltas and verdicts are known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from evolve.store import Evaluation, Purpose, Store
from genome.hyperparams import commit_hyperparams
from genome.merge import merge_crossover
from genome.workspace import init_workspace

RUN = "r1"
SEARCH_DEPTH = 2
VALIDATION_DEPTH = 4


@dataclass(frozen=True)
class Built:
    root: Path
    db: Path
    ids: dict[str, str]  # role -> genome id


def _ev(ind: str, seed: int, bpb: float | None, *, status: str = "ok", purpose: str = "search",
        depth: int = SEARCH_DEPTH, device: str = "cpu", wall: float = 6.0) -> Evaluation:  # fmt: skip
    return Evaluation(
        individual=ind, depth=depth, budget=5.0, seed=seed, profile="tiny", status=status,
        purpose=Purpose(purpose), val_bpb=bpb, metrics={"val_bpb": bpb, "num_steps": 10 + seed},
        data_fingerprint="fp", device=device, wall_seconds=wall, training_seconds=wall - 1,
        torch_version="2.13", error_tail="" if status == "ok" else "RuntimeError: boom",
    )  # fmt: skip


def build_run(where: Path, *, validate: bool = True) -> Built:
    ws = init_workspace(where, run=RUN, profile="tiny")
    repo = ws.repo()
    db = ws.state_dir / "evolve.db"
    base = repo.baseline()
    store = Store(db)
    store.add_run(RUN, strategy="population", profile="tiny", settings={"islands": 2, "depth": SEARCH_DEPTH})

    def add(genome, island: int, status: str = "queued", **kw):
        return store.add_individual(
            id=genome.id, run=RUN, commit=genome.commit, branch=genome.branch, parents=genome.parents,
            operator=genome.operator, description=genome.description, island=island, status=status, **kw,
        )  # fmt: skip

    add(base, 0)
    for seed, bpb in enumerate((1.00, 1.01, 0.99)):
        store.record_evaluation(_ev(base.id, seed, bpb, purpose="baseline"))
    store.set_decision(base.id, "accept")  # as the engine does once its seeds are in

    lr = commit_hyperparams(repo, base, {"MATRIX_LR": 0.05}, description="raise MATRIX_LR to 0.05")
    add(lr, 0)
    store.record_evaluation(_ev(lr.id, 0, 0.98))
    store.set_decision(lr.id, "accept")

    cap = commit_hyperparams(
        repo, base, {"LOGIT_SOFTCAP": 20.0}, operator="llm_mutation", description="softcap 20"
    )
    add(cap, 1)
    store.record_evaluation(_ev(cap.id, 0, 1.02))
    store.set_decision(cap.id, "reject")

    warm = commit_hyperparams(repo, lr, {"WARMDOWN_FRAC": 0.6}, description="longer warmdown")
    add(warm, 0)
    for seed, bpb in enumerate((0.95, 0.96, 0.94)):
        store.record_evaluation(
            _ev(warm.id, seed, bpb, purpose="search" if seed == 0 else "reeval", device="0,1")
        )
    store.set_decision(warm.id, "accept")

    merged = merge_crossover(repo, warm, cap)
    assert merged.is_clean and merged.genome is not None
    add(merged.genome, 1, kind="merge")
    store.record_evaluation(_ev(merged.genome.id, 0, 0.96))
    store.set_decision(merged.genome.id, "reject")

    crash = commit_hyperparams(repo, lr, {"HEAD_DIM": 7}, operator="llm_mutation", description="odd head dim")
    add(crash, 0)
    store.record_evaluation(_ev(crash.id, 0, None, status="crash"))

    bad = commit_hyperparams(repo, cap, {"MLP_RATIO": 9}, operator="llm_mutation", description="wide mlp")
    add(bad, 1, status="rejected", guard_reason="identical to an evaluated individual")

    store.add_llm_call(
        model="m", ok=True, operator="llm_mutation", prompt_tokens=1000, completion_tokens=200, run=RUN
    )
    if validate:
        for seed, bpb in enumerate((0.900, 0.905)):
            store.record_evaluation(
                _ev(base.id, seed, bpb, purpose="validation", depth=VALIDATION_DEPTH, wall=20)
            )
        for ind, bpb in ((warm.id, 0.870), (merged.genome.id, 0.898), (lr.id, 0.910)):
            store.record_evaluation(_ev(ind, 0, bpb, purpose="validation", depth=VALIDATION_DEPTH, wall=20))
    store.close()
    ids = dict(
        base=base.id, lr=lr.id, cap=cap.id, warm=warm.id, merge=merged.genome.id, crash=crash.id, bad=bad.id
    )
    return Built(ws.root, db, ids)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_run(tmp_path_factory.mktemp("analysis") / "ws")
