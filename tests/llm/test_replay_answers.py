"""The LLM replay benchmark's recorded answers still do what they were written to do on the packaged baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from genome.edits import parse_response
from genome.errors import EditError
from genome.workspace import init_workspace

BENCH = Path(__file__).parents[2] / "bench"
sys.path.insert(0, str(BENCH))
from llm_replay import Replayer, notebook, render  # noqa: E402

ANSWERS = json.loads((BENCH / "llm_replay_answers.json").read_text())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    ws = init_workspace(tmp_path_factory.mktemp("replay") / "ws", run="r", profile="tiny")
    repo = ws.repo()
    return repo, repo.baseline()


@pytest.mark.parametrize("entry", ANSWERS["mutations"], ids=lambda e: e["description"][:30])
def test_each_recorded_mutation_applies_or_breaks_as_recorded(baseline, entry):
    repo, base = baseline
    source = repo.read(base)
    text = render(entry, source)
    assert text is not None, "a recorded answer no longer fits the baseline train.py"
    if entry["kind"] == "broken" and ("text" in entry or "repair" in entry):
        with pytest.raises(EditError):  # prose, a cut-off answer, a SEARCH that matches nowhere
            repo.apply_edit(
                base, parse_response(text) if entry.get("finish") != "length" else text[:-1] + "x"
            )
        if "repair" in entry:
            repo.apply_edit(base, render({"kind": "good", **entry["repair"]}, source))
        return
    child = repo.apply_edit(base, text)  # good, useless, and code that fails only when it runs
    assert repo.read(child) != source


def test_the_replayer_skips_an_idea_the_prompt_lists_as_tried(baseline):
    repo, base = baseline
    file = f"## train.py of g0000\n```python\n{repo.read(base)}```\n"
    tried = "## Children of g0000 already tried (newest first)\n- g0001 [llm_mutation] x {MATRIX_LR 0.04 -> 0.06}: 3.1\n"
    aware, blind = Replayer(ANSWERS), Replayer(ANSWERS, blind=True)
    first = lambda r: r(
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": tried + file}]}
    )
    for _ in range(2):  # the batch-size answer, then the next one
        a, b = first(aware), first(blind)
    assert "MATRIX_LR" in b.text and "MATRIX_LR" not in a.text
    notes = notebook("- g0001 [llm_mutation] lr up: 3.100000 (-0.380000 vs best parent)\n")
    assert notes.startswith("What helped\n- lr up [g0001 -0.3800]")
