"""End to end: the engine trains an LLM-written child (tiny profile, CPU) and the key stays out of it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from loopback import SECRET, Reply, answer

from evolve.engine import Engine, EngineConfig
from evolve.scheduler import StopConditions
from evolve.store import Store
from genome import init_workspace
from trainer import LocalExecutor

# The child prints the names of its environment variables and whether any value holds the key.
ENV_DUMP = (
    answer(
        "print the environment",
        "cfg = prepare.run_config()",
        "cfg = prepare.run_config()\n"
        "print('ENV-NAMES:', ' '.join(sorted(os.environ)))\n"
        "print('KEY-SEEN:', any('sk-test' in v for v in os.environ.values()))",
    )
    + "\n<<<<<<< SEARCH\nimport math\n=======\nimport math\nimport os\n>>>>>>> REPLACE\n"
)


@pytest.mark.slow
def test_an_llm_mutation_is_trained_and_the_key_never_reaches_it(tmp_path, llm_server, use_tiny_data):
    llm_server.default = lambda body: Reply(text=ENV_DUMP)
    ws = init_workspace(tmp_path / "ws", "e2e", profile="tiny", budget=4096)
    llm = {
        "model": "m1",
        "tokenizer": "approx",
        "backoff": 0.01,
        "insights_every": 0,
        "prices": {"m1": [1.0, 1.0]},
    }
    ws = ws.__class__(root=ws.root, settings=ws.settings.with_changes(llm=llm))
    config = EngineConfig.from_workspace(
        ws, operators=("llm_mutation",), baseline_seeds=2, max_seeds=2, proposers=1, ahead=0,
        stop=StopConditions(max_experiments=1),
    )  # fmt: skip
    executor = LocalExecutor.cpu(1)
    engine = Engine(ws, config, executor)
    try:
        engine.run(install_signals=False)
    finally:
        engine.close()
        executor.shutdown()
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        children = [i for i in store.individuals("e2e") if i.parents]
        trained = {i.description: i for i in children if i.status.value == "evaluated"}
        why = [
            (i.description, i.status.value, i.guard_reason, [e.reason for e in store.evaluations(i.id)])
            for i in children
        ]
        assert "print the environment" in trained, why
        spend = store.llm_spend("e2e")
        assert spend["calls"] >= 1 and spend["cost"] > 0 and spend["prompt_tokens"] > 0
        log = _read(store.evaluations(trained["print the environment"].id)[-1].log_path)
    assert "ENV-NAMES:" in log and "KEY-SEEN: False" in log
    names = log.split("ENV-NAMES:")[1].splitlines()[0].split()
    assert not [n for n in names if "KEY" in n or "OPENAI" in n]
    for path in ws.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in _bytes(path), path


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _read(path: str | None) -> str:
    assert path, "the evaluation has no log"
    return _bytes(Path(path)).decode(errors="replace")
