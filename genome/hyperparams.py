"""The hyperparameter block: top-level UPPER_CASE constants of train.py, read and rewritten with `ast`.

A constant counts when it is assigned once at the top level to a literal: a number, a bool, a
string, None, a tuple of those, a negative number, or constant arithmetic such as `2**19`.
Rewriting replaces only the value's source segment (found from the node's end offsets), so the
comments, the alignment and every other line stay exactly as they were.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import pyast
from .errors import GenomeError
from .record import Genome
from .repo import GenomeRepo

NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_NOT_LITERAL = object()


@dataclass(frozen=True)
class Hyperparam:
    name: str
    value: Any
    source: str  # the value as written, e.g. "2**19"
    line: int  # 1-based
    comment: str  # the trailing comment on that line, without "#" (may explain the knob)

    @property
    def kind(self) -> str:
        return type(self.value).__name__


def _literal(node: ast.AST) -> Any:
    """The value of a literal node (constant arithmetic included), else _NOT_LITERAL."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Tuple):
        items = [_literal(e) for e in node.elts]
        return _NOT_LITERAL if any(i is _NOT_LITERAL for i in items) else tuple(items)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _literal(node.left), _literal(node.right)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        if numbers and not (isinstance(node.op, ast.Pow) and abs(right) > 64):
            try:
                return _BINOPS[type(node.op)](left, right)
            except (ArithmeticError, ValueError):
                return _NOT_LITERAL
    return _NOT_LITERAL


def _line_offsets(source: str) -> list[int]:
    """Byte offset of each line's start in the UTF-8 source (ast's columns are UTF-8 bytes)."""
    offsets, total = [], 0
    for line in source.encode().splitlines(keepends=True):
        offsets.append(total)
        total += len(line)
    return offsets


def _targets(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)] + [
            e.id for t in stmt.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)
        ]
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []


def _comment(line: str) -> str:
    """The trailing comment of a source line (a '#' outside string literals)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[i + 1 :].strip()
    return ""


def _nodes(source: str) -> dict[str, tuple[ast.AST, Any]]:
    try:
        tree = pyast.parse(source)
    except SyntaxError as exc:
        raise GenomeError(f"train.py does not parse (line {exc.lineno}: {exc.msg}); fix it first") from None
    seen: dict[str, int] = {}
    found: dict[str, tuple[ast.AST, Any]] = {}
    for stmt in tree.body:
        for name in _targets(stmt):
            seen[name] = seen.get(name, 0) + 1
        single = (
            isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        )
        annotated = isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value
        if not (single or annotated):
            continue
        name = stmt.targets[0].id if single else stmt.target.id
        value = _literal(stmt.value)
        if NAME_RE.match(name) and value is not _NOT_LITERAL and name not in found:
            found[name] = (stmt.value, value)
    # A name assigned twice at the top level is not a knob: rewriting the first would do nothing.
    return {n: v for n, v in found.items() if seen[n] == 1}


def parse_hyperparams(source: str) -> dict[str, Hyperparam]:
    """The block's constants, in file order."""
    raw = source.encode()
    lines = raw.splitlines()
    offsets = _line_offsets(source)
    out = {}
    for name, (node, value) in _nodes(source).items():
        start = offsets[node.lineno - 1] + node.col_offset
        stop = offsets[node.end_lineno - 1] + node.end_col_offset
        out[name] = Hyperparam(
            name=name,
            value=value,
            source=raw[start:stop].decode(),
            line=node.lineno,
            comment=_comment(lines[node.end_lineno - 1][node.end_col_offset :].decode()),
        )
    return out


def format_value(value: Any, old_source: str = "") -> str:
    """Python source for a literal value; floats keep exponent notation when the old value used it."""
    if isinstance(value, str) and old_source.startswith('"'):
        return json.dumps(value, ensure_ascii=False)  # keep double quotes; JSON escapes are Python's too
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GenomeError(f"{value} is not a finite number; hyperparameters must be finite")
        if "e" in old_source.lower() and value != 0:
            for digits in range(17):  # the shortest exponent form that reads back exactly
                text = f"{value:.{digits}e}"
                if float(text) == value:
                    mantissa, exponent = text.split("e")
                    return f"{mantissa}e{int(exponent)}"
        return repr(value)
    if isinstance(value, (tuple, list)):
        items = [format_value(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    raise GenomeError(
        f"cannot write a {type(value).__name__} as a hyperparameter; use int, float, bool, str or tuple"
    )


def rewrite_hyperparams(source: str, values: Mapping[str, Any]) -> str:
    """`source` with the named constants set to new values; nothing else changes."""
    nodes = _nodes(source)
    unknown = sorted(set(values) - set(nodes))
    if unknown:
        raise GenomeError(
            f"no hyperparameter named {', '.join(unknown)} in train.py; known: {', '.join(nodes) or 'none'}"
        )
    raw = source.encode()
    offsets = _line_offsets(source)
    spans = []
    for name, value in values.items():
        node, old = nodes[name]
        if isinstance(old, bool) != isinstance(value, bool) or isinstance(old, str) != isinstance(value, str):
            raise GenomeError(f"{name} is a {type(old).__name__}; cannot set it to {value!r}")
        start = offsets[node.lineno - 1] + node.col_offset
        stop = offsets[node.end_lineno - 1] + node.end_col_offset
        spans.append((start, stop, format_value(value, raw[start:stop].decode()).encode()))
    for start, stop, text in sorted(spans, reverse=True):
        raw = raw[:start] + text + raw[stop:]
    return raw.decode()


def describe_changes(old: Mapping[str, Hyperparam], values: Mapping[str, Any]) -> str:
    """A one-line description such as `MATRIX_LR 0.04 -> 0.05, WARMDOWN_FRAC 0.5 -> 0.6`."""
    return ", ".join(f"{k} {old[k].source} -> {format_value(v, old[k].source)}" for k, v in values.items())


def commit_hyperparams(
    repo: GenomeRepo,
    parent: Genome,
    values: Mapping[str, Any],
    operator: str = "optuna",
    description: str | None = None,
    path: str = "train.py",
) -> Genome:
    """A child of `parent` whose hyperparameters are `values` (the Optuna tweak's commit)."""
    source = repo.read(parent, path)
    new = rewrite_hyperparams(source, values)
    if new == source:
        raise GenomeError(f"the values {dict(values)} are the ones {parent.id} already has")
    text = description or describe_changes(parse_hyperparams(source), values)
    return repo.commit_child([parent], {path: new}, text, operator)
