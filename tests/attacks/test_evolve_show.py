"""Attacks through the real engine on CPU: each child is refused or judged invalid, and `evolve show` says why."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "badgenomes"))  # the shared lab
from attack_variants import ATTACKS  # noqa: E402
from genome_lab import FAST, apply  # noqa: E402

import genome.baseline  # noqa: E402
from evolve.cli import main  # noqa: E402
from evolve.engine import Engine, EngineConfig  # noqa: E402
from evolve.operators import Proposal  # noqa: E402
from evolve.scheduler import StopConditions, StopReason  # noqa: E402
from evolve.store import Status  # noqa: E402
from genome import rewrite_hyperparams  # noqa: E402
from genome.settings import SETTINGS_FILE  # noqa: E402
from genome.workspace import init_workspace  # noqa: E402
from trainer import LocalExecutor  # noqa: E402

pytestmark = pytest.mark.slow
BASELINE = Path(genome.baseline.__path__[0]) / "train.py"
# One of each class that an honest-looking score could come from: a model that reads later tokens
# (two ways) or keeps state between calls; sqlite on the store; a write into prepare; reads of the
# validation split plainly, through dir_fd and as code compiled under the metric's file name, and
# of the scored rows through inspect (the guard refuses these four before any run). The classes
# that change nothing (patching the metric, switching the tripwire off, training on warm-up or
# kept batches) are judged on their merits in test_metric_attacks.py.
CHOSEN = (
    "peeks_where_the_old_probe_did_not_look",
    "looks_up_the_answer",
    "answers_the_probe_from_a_cache",
    "writes_fake_evaluations_into_the_store",
    "forges_a_pyc_in_prepares_cache",
    "reads_the_validation_shards",
    "reads_the_validation_shards_with_dir_fd",
    "reads_the_validation_shards_as_the_metric",
    "reads_the_scored_rows_through_inspect",
)


def test_each_attack_is_invalid_or_refused_and_evolve_show_says_why(tmp_path, use_tiny_data):
    fast = tmp_path / "fast" / "train.py"  # the baseline with small CPU steps
    fast.parent.mkdir()
    fast.write_text(rewrite_hyperparams(BASELINE.read_text(), FAST))
    ws = init_workspace(tmp_path / "ws", run="atk", profile="tiny", islands=1, budget=4096, train_py=fast)
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write('\n[search]\nbaseline_seeds = 2\noperators = ["optuna_tweak"]\n')
    attacks = {a.name: a for a in ATTACKS}
    values = {"STORE": str(ws.state_dir), "DATA": str(use_tiny_data), "PREPARE": "/nonexistent"}
    with LocalExecutor.cpu(2) as executor:
        engine = Engine(
            ws, EngineConfig.from_workspace(ws, stop=StopConditions(max_experiments=len(CHOSEN))), executor
        )
        engine.start()
        base = engine.repo.get("g0000")
        ids = {}
        for name in CHOSEN:
            text = apply(engine.repo.read(base), attacks[name].edits)
            for key, value in values.items():
                text = text.replace("{" + key + "}", value)
            child = engine.repo.commit_child([base], {"train.py": text}, name, "llm_mutation")
            engine._intake(Proposal(child), island=0)
            ids[name] = child.id
        assert engine.scheduler.run(install_signals=False) is StopReason.DONE
        engine.finish(StopReason.DONE)
        engine.close()
    runner = CliRunner()
    shown = {}
    for name, cid in ids.items():
        out = runner.invoke(main, ["show", cid, "-w", str(ws.root)])
        assert out.exit_code == 0, out.output
        shown[name] = out.output
    as_json = json.loads(runner.invoke(main, ["status", "-w", str(ws.root), "--json"]).output)
    assert as_json["unisolated_evaluations"] == 0  # every score was made in a sandbox

    for name in CHOSEN:
        attack, text = attacks[name], shown[name]
        if attack.guard is not None:  # refused before any run, with the guard's reason
            assert "refused: " in text and attack.guard in text, (name, text)
        else:  # trained, then judged: the verdict and its reason
            assert attack.status.value in text and attack.reason in text, (name, text)
    with engine.store.__class__(ws.state_dir / "evolve.db", readonly=True) as store:
        for name in CHOSEN:
            assert store.get(ids[name]).status in (Status.FAILED, Status.REJECTED), name
