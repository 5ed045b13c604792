"""Parsing Python from several threads at once, safely.

CPython before 3.13 keeps the AST constructor's recursion depth in per-interpreter state. When a
parse lets another thread run (a garbage collection calls a finalizer, which runs Python code)
and that thread parses too, the count is corrupted and the first parse fails with
`SystemError: AST constructor recursion depth mismatch` (python/cpython#106905). The engine's
proposal workers parse concurrently (novelty hash, static guard, hyperparameter block, Optuna's
lineage key), so every parse and every compile of a tree in this project goes through one lock.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, serialized across threads."""
    with _LOCK:
        return ast.parse(source, filename=filename)


def compile_tree(tree: ast.Module, filename: str) -> None:
    """Compile a parsed module (to find what only the compiler rejects), serialized across threads."""
    with _LOCK:
        compile(tree, filename, "exec")
