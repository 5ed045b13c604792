"""Novelty: a hash of code that ignores comments, docstrings and formatting.

A child whose normalized code equals one already tried (queued, running, evaluated or failed) is
not trained again: `twin` finds that one, for the engine's intake and for the operators, which
ask before they commit (`tried_as`), so an LLM can be told to change its answer instead. Normalizing goes through the AST: comments and layout never
reach it, docstrings are dropped, and `ast.dump` without positions is the canonical form. Two
sources hash equal exactly when they parse to the same tree, so any change to code differs.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from genome import pyast

from .records import Status

if TYPE_CHECKING:
    from .store import Individual, Store

TRIED = (Status.QUEUED, Status.RUNNING, Status.EVALUATED, Status.FAILED)  # code that counts as tried

_HAS_BODY = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class _DropDocstrings(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        if isinstance(node, _HAS_BODY) and node.body and _is_docstring(node.body[0]):
            # An empty body is not valid Python; `pass` is what a docstring-only body means.
            node.body = node.body[1:] or [ast.Pass()]
        return node


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _tree(source: str) -> ast.AST:
    return _DropDocstrings().visit(pyast.parse(source))


def normalized_source(source: str) -> str:
    """The source as the AST sees it, re-printed: no comments, no docstrings, one layout.

    Source that does not parse is returned with comment-only and blank lines removed and each
    line's whitespace collapsed, so it can still be compared (a guard rejects it anyway)."""
    try:
        return ast.unparse(_tree(source))
    except SyntaxError:
        lines = (" ".join(line.split()) for line in source.splitlines())
        return "\n".join(line for line in lines if line and not line.startswith("#"))


def normalized_code_hash(source: str) -> str:
    """sha256 of the normalized code: equal for formatting/comment/docstring-only edits."""
    try:
        canonical = "ast:" + ast.dump(_tree(source), annotate_fields=True, include_attributes=False)
    except SyntaxError:
        canonical = "text:" + normalized_source(source)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tree_hash(files: Mapping[str, str]) -> str:
    """One hash for several files ({path: source}); a path that moves changes the hash."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{normalized_code_hash(files[path])}\0".encode())
    return digest.hexdigest()


def similarity(a: str, b: str) -> float:
    """How alike two sources are after normalizing, from 0.0 (nothing shared) to 1.0 (equal).

    A ratio of matching normalized lines, for spotting near-duplicates of what was tried."""
    left, right = normalized_source(a).splitlines(), normalized_source(b).splitlines()
    if not left and not right:
        return 1.0
    return difflib.SequenceMatcher(None, left, right, autojunk=False).ratio()


def twin(store: Store, run: str, code_hash: str) -> Individual | None:
    """The individual of `run` already tried with this normalized code, if any."""
    return store.find_by_code_hash(code_hash, run, statuses=TRIED)


def tried_as(store: Store, run: str, files: Mapping[str, str]) -> Individual | None:
    """The individual already tried with exactly this code (all mutable files, normalized)."""
    return twin(store, run, tree_hash(files))
