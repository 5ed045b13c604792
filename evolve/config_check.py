"""evolve.toml as a whole: every table and key known, every value of the type it must have.

A typo must not pass as a setting: `[serch]` or `[operators.optuna_tweek]` silently ignored would
run a different experiment than the one the user wrote down. `check_tables` refuses unknown
tables, unknown operators and unknown keys with a "did you mean"; `check_values` refuses a value
of the wrong type (`depth = 2.5`, `budget = true`) instead of rounding or reading it as 1.
`evolve run` and `evolve validate` call them before anything starts; genome checks `[run]` itself.

The tables: `[run]` (genome.settings), `[llm]` (evolve.llm.config), `[search]` (EngineConfig),
`[store]` (backups), `[validate]` (ValidationSpec) and `[operators.<name>]` (each operator's
options, plus the engine's `weight`).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import EvolveError

TABLES = ("run", "llm", "search", "store", "validate", "operators")
OPERATOR_KEYS = frozenset({"weight"})  # the engine's own key in every [operators.<name>] table


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'; did you mean X?' for the closest known word, or the list of known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; known: {', '.join(known)}" if known else ""


def check_keys(table: str, values: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise on the first key of `[table]` that is not in `known`."""
    known = set(known)
    for key in sorted(values):
        if key not in known:
            raise EvolveError(f"evolve.toml: unknown key {key!r} in [{table}]{did_you_mean(key, known)}")


def check_tables(data: Mapping[str, Any], operators: Mapping[str, frozenset[str] | None]) -> None:
    """Unknown tables and operator names are errors; `operators` maps each registered operator
    to the option keys it reads (None: it does not say, so its keys are not checked)."""
    for name in data:
        if name not in TABLES:
            shown = f"table [{name}]" if isinstance(data[name], Mapping) else f"top-level key {name!r}"
            close = difflib.get_close_matches(name, TABLES, n=1, cutoff=0.6)
            hint = (
                f"did you mean [{close[0]}]?" if close else "tables: " + ", ".join(f"[{t}]" for t in TABLES)
            )
            raise EvolveError(f"evolve.toml: unknown {shown}; {hint}")
    for name in TABLES:
        if name in data and not isinstance(data[name], Mapping):
            raise EvolveError(
                f"evolve.toml: {name} must be a table ([{name}]), not {type(data[name]).__name__}"
            )
    for name, options in (data.get("operators") or {}).items():
        if name not in operators:
            close = difflib.get_close_matches(name, sorted(operators), n=1, cutoff=0.6)
            hint = (
                f"; did you mean [operators.{close[0]}]?"
                if close
                else f"; known: {', '.join(sorted(operators))}"
            )
            raise EvolveError(f"evolve.toml: unknown operator [operators.{name}]{hint}")
        if not isinstance(options, Mapping):
            raise EvolveError(f"evolve.toml: operators.{name} must be a table ([operators.{name}])")
        keys = operators[name]
        if keys is not None:
            check_keys(f"operators.{name}", options, keys | OPERATOR_KEYS)


def type_error(table: str, key: str, value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the annotation `hint` (None when it does)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if all(type_error(table, key, value, option) for option in options):
            names = " or ".join("none" if o is type(None) else _name(o) for o in options)
            return f"[{table}] {key} must be {names}, not {value!r}"
        return None
    if hint is type(None):
        return None if value is None else f"[{table}] {key} must be empty, not {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"[{table}] {key} must be true or false, not {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"[{table}] {key} must be a whole number, not {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"[{table}] {key} must be a number, not {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"[{table}] {key} must be a string, not {value!r}"
    if origin in (tuple, list):
        if isinstance(value, str):  # "a,b" is accepted where a list of strings is
            return (
                None
                if typing.get_args(hint)[:1] == (str,)
                else f"[{table}] {key} must be a list, not {value!r}"
            )
        if not isinstance(value, (list, tuple)):
            return f"[{table}] {key} must be a list, not {value!r}"
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        for element in value:
            if item is not Any and type_error(table, key, element, item):
                return f"[{table}] {key} must be a list of {_name(item)}s, not {value!r}"
        return None
    return None  # Mappings and anything else: the owner checks them


def _name(hint: Any) -> str:
    return {int: "whole number", float: "number", str: "string", bool: "true/false"}.get(hint, str(hint))


def check_values(table: str, values: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    """Raise on the first value of `[table]` whose type does not fit its field's annotation."""
    for key, value in values.items():
        if key in hints:
            problem = type_error(table, key, value, hints[key])
            if problem:
                raise EvolveError(f"evolve.toml: {problem}; fix the file")


def operator_options() -> dict[str, frozenset[str] | None]:
    """Every registered operator and the option keys it declares (`Operator.OPTIONS`)."""
    from .operators.base import REGISTRY, available

    available()
    return {name: getattr(factory, "OPTIONS", None) for name, factory in REGISTRY.items()}
