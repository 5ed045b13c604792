"""Normalized code hashes: formatting, comments and docstrings don't count; any code change does."""

from __future__ import annotations

from evolve.novelty import normalized_code_hash, normalized_source, similarity, tree_hash
from evolve.store import Store

BASE = '''"""Train a tiny GPT."""
import math

LR = 0.04  # learning rate
DEPTH = 8


def schedule(step, total):
    """Linear warmdown."""
    return max(0.0, 1 - step / total)
'''


def h(src: str) -> str:
    return normalized_code_hash(src)


def test_comment_docstring_and_layout_changes_hash_equal():
    reformatted = """import math
LR   =   0.04
DEPTH = (8)

# a new comment block
def schedule( step,
              total ):
    return max(0.0, 1 - step/total)   # trailing comment
"""
    assert h(BASE) == h(reformatted)
    assert h(BASE) == h(BASE.replace('"""Linear warmdown."""', "'''Cosine? No: linear.'''"))
    assert h(BASE.replace("\n", "\r\n")) == h(BASE)


def test_any_code_change_hashes_differently():
    variants = [
        BASE.replace("LR = 0.04", "LR = 0.05"),
        BASE.replace("DEPTH = 8", "DEPTH = 9"),
        BASE.replace("1 - step / total", "1 - step / (total + 1)"),
        BASE.replace("import math\n", ""),
        BASE.replace("max(0.0", "min(0.0"),
        BASE + "\nprint('done')\n",
        BASE.replace("def schedule(step, total):", "def schedule(total, step):"),
    ]
    hashes = {h(v) for v in variants}
    assert len(hashes) == len(variants) and h(BASE) not in hashes


def test_a_string_statement_that_is_not_a_docstring_is_code():
    with_doc = "def f():\n    x = 1\n    'not a docstring'\n    return x\n"
    without = "def f():\n    x = 1\n    return x\n"
    assert h(with_doc) != h(without)
    assert h("x = 'a'\n") != h("x = 'b'\n")


def test_unparsable_source_still_hashes_and_ignores_comment_lines():
    broken = "def f(:\n    return 1\n"
    assert h(broken) == h("# note\ndef f(:\n      return 1\n")
    assert h(broken) != h("def f(:\n    return 2\n")
    assert "# note" not in normalized_source("# note\ndef f(:\n")


def test_tree_hash_and_similarity():
    assert tree_hash({"train.py": BASE, "lib.py": "x = 1"}) == tree_hash(
        {"lib.py": "x=1  # c", "train.py": BASE}
    )
    assert tree_hash({"train.py": BASE}) != tree_hash({"model.py": BASE})
    assert similarity(BASE, BASE.replace("# learning rate", "")) == 1.0
    near = similarity(BASE, BASE.replace("LR = 0.04", "LR = 0.05"))
    far = similarity(BASE, "import torch\nprint(torch.ones(3))\n")
    assert 0.5 < near < 1.0 and far < near


def test_store_finds_an_evaluated_individual_by_normalized_hash(tmp_path):
    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")
    store.add_individual(id="a", run="r", commit="c1", code_hash=h(BASE), status="evaluated")
    duplicate = BASE.replace("# learning rate", "# the LR")
    assert store.find_by_code_hash(h(duplicate)).id == "a"
    assert store.find_by_code_hash(h(BASE.replace("0.04", "0.03"))) is None
