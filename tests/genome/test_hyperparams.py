"""The hyperparameter block: parsed with ast, rewritten in place with comments and layout kept."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genome import GenomeError, commit_hyperparams, parse_hyperparams, rewrite_hyperparams
from genome.baseline import BASELINE

SOURCE = '''"""doc"""
import torch

# =====  HYPERPARAMETERS  =====
LR = 3e-4  # peak learning rate
STEPS   = 1_000   # aligned on purpose
WARMUP: float = 0.05
BETAS = (0.9, 0.95)  # AdamW
SHIFT = -2
OFFSET = -0.5
FLAG = True
NAME = "relu²"  # unicode before the comment
TOTAL = 2**19  # tokens per step
NOTHING = None
SPLIT = (
    1,
    2,
)
BIG = 10e3
NOT_LITERAL = torch.ones(3)
TWICE = 1
TWICE = 2
a, B = 1, 2
lower_case = 5


def f():
    INNER = 3
    return INNER
'''


def test_parse_finds_literal_upper_case_constants_in_order():
    params = parse_hyperparams(SOURCE)
    assert list(params) == ["LR", "STEPS", "WARMUP", "BETAS", "SHIFT", "OFFSET", "FLAG", "NAME", "TOTAL",
                            "NOTHING", "SPLIT", "BIG"]  # fmt: skip
    assert (
        params["LR"].value == 3e-4 and params["LR"].comment == "peak learning rate" and params["LR"].line == 5
    )
    assert params["STEPS"].value == 1000 and params["BETAS"].value == (0.9, 0.95)
    assert params["SHIFT"].value == -2 and params["OFFSET"].value == -0.5 and params["FLAG"] is not None
    assert params["NAME"].value == "relu²" and params["NAME"].comment == "unicode before the comment"
    assert params["TOTAL"].value == 2**19 and params["TOTAL"].source == "2**19"
    assert params["SPLIT"].value == (1, 2) and params["FLAG"].kind == "bool"


def test_rewrite_changes_only_the_values():
    new = rewrite_hyperparams(
        SOURCE,
        {"LR": 5e-4, "STEPS": 2000, "BETAS": (0.8, 0.99), "SHIFT": 3, "FLAG": False, "NAME": "gelu", "TOTAL": 2**18,
         "SPLIT": (3,), "WARMUP": 0.1, "BIG": 2e4},
    )  # fmt: skip
    changed = [ln for ln in difflib.ndiff(SOURCE.splitlines(), new.splitlines()) if ln.startswith("+ ")]
    assert changed == [
        "+ LR = 5e-4  # peak learning rate",
        "+ STEPS   = 2000   # aligned on purpose",
        "+ WARMUP: float = 0.1",
        "+ BETAS = (0.8, 0.99)  # AdamW",
        "+ SHIFT = 3",
        "+ FLAG = False",
        '+ NAME = "gelu"  # unicode before the comment',
        "+ TOTAL = 262144  # tokens per step",
        "+ SPLIT = (3,)",
        "+ BIG = 2e4",
    ]
    assert len(new.splitlines()) == len(SOURCE.splitlines()) - 3  # the 4-line tuple became one line
    params = parse_hyperparams(new)
    assert params["LR"].value == 5e-4 and params["SPLIT"].value == (3,) and params["NAME"].value == "gelu"


def test_rewrite_refuses_unknown_names_wrong_types_and_non_finite_values():
    with pytest.raises(GenomeError, match="no hyperparameter named INNER, TWICE"):
        rewrite_hyperparams(SOURCE, {"TWICE": 3, "INNER": 4})
    with pytest.raises(GenomeError, match="FLAG is a bool"):
        rewrite_hyperparams(SOURCE, {"FLAG": 1})
    with pytest.raises(GenomeError, match="NAME is a str"):
        rewrite_hyperparams(SOURCE, {"NAME": 3})
    with pytest.raises(GenomeError, match="finite"):
        rewrite_hyperparams(SOURCE, {"LR": float("nan")})
    with pytest.raises(GenomeError, match="does not parse"):
        parse_hyperparams("X = (\n")


@settings(max_examples=100, deadline=None)
@given(
    st.floats(min_value=1e-8, max_value=1e4, allow_nan=False),
    st.integers(-(10**6), 10**6),
    st.tuples(st.floats(0, 1), st.floats(0, 1)),
    st.booleans(),
    st.text(max_size=10),
)
def test_rewrite_then_parse_gives_the_values_back(lr, shift, betas, flag, name):
    new = rewrite_hyperparams(SOURCE, {"LR": lr, "SHIFT": shift, "BETAS": betas, "FLAG": flag, "NAME": name})
    params = parse_hyperparams(new)
    assert (params["LR"].value, params["SHIFT"].value, params["BETAS"].value) == (lr, shift, betas)
    assert (params["FLAG"].value, params["NAME"].value) == (flag, name)
    assert params["LR"].comment == "peak learning rate" and params["STEPS"].source == "1_000"


def test_the_real_baseline_block_parses_and_rewrites():
    source = BASELINE.read_text()
    params = parse_hyperparams(source)
    assert {"MATRIX_LR", "ADAM_BETAS", "TOTAL_BATCH_TOKENS", "WINDOW_PATTERN", "VALUE_EMBEDS"} <= set(params)
    assert params["TOTAL_BATCH_TOKENS"].value == 2**19
    assert "T_PROCESS_START" not in params  # time.time() is not a knob
    new = rewrite_hyperparams(
        source, {"MATRIX_LR": 0.05, "ADAM_BETAS": (0.85, 0.95), "WINDOW_PATTERN": "SSL"}
    )
    diff = [ln for ln in difflib.unified_diff(source.splitlines(), new.splitlines(), lineterm="", n=0)
            if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]  # fmt: skip
    assert len(diff) == 6
    assert "+MATRIX_LR = 0.05  # Muon, every 2-D matrix inside the blocks" in diff


def test_commit_hyperparams_makes_a_described_child(repo):
    base = repo.baseline()
    child = commit_hyperparams(repo, base, {"LEARNING_RATE": 5e-3, "BATCH_SIZE": 16})
    assert child.operator == "optuna" and child.parents == (base.id,)
    assert child.description == "LEARNING_RATE 3e-3 -> 5e-3, BATCH_SIZE 8 -> 16"
    assert parse_hyperparams(repo.read(child))["LEARNING_RATE"].value == 5e-3
    with pytest.raises(GenomeError, match="already has"):
        commit_hyperparams(repo, base, {"BATCH_SIZE": 8})
