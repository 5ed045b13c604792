"""`evolve.toml`: a run's settings, committed in the workspace beside train.py and program.md.

    [run]
    name = "mar27"          # branches are evo/<name>/<id>
    profile = "h100"        # prepare's profile: sequence length, vocabulary, default budget
    source = "climbmix"     # the prepared data source
    strategy = "population" # "population" (islands) or "ratchet" (autoresearch: keep if better)
    islands = 4             # islands of the population strategy
    budget = 300.0          # seconds of training per experiment
    depth = 12              # model depth during the search
    mutable = ["train.py"]  # the files a child may change (the static guard enforces it)

    [llm]                   # read by the LLM operators; empty values are filled in by flags/env
    model = ""
    base_url = ""
    api_key_env = "OPENAI_API_KEY"  # the NAME of the variable that holds the key, never the key

Flags of `evolve run` override these values; other tables and keys are kept for the other
packages, which read them with `read_settings`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prepare.profiles import PROFILES, get_profile

from .errors import GenomeError
from .record import check_run_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SETTINGS_FILE = "evolve.toml"
STRATEGIES = ("population", "ratchet")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
LLM_DEFAULTS: dict[str, Any] = {"model": "", "base_url": "", "api_key_env": "OPENAI_API_KEY"}


@dataclass(frozen=True)
class Settings:
    """The [run] table of evolve.toml, checked; `llm` is the [llm] table as read."""

    name: str
    profile: str = "h100"
    source: str = ""  # empty: the profile's default source
    strategy: str = "population"
    islands: int = 4
    budget: float = 0.0  # 0: the profile's time budget
    depth: int = 0  # 0: the profile's search depth
    mutable: tuple[str, ...] = ("train.py",)
    llm: dict[str, Any] = field(default_factory=lambda: dict(LLM_DEFAULTS))

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if self.profile not in PROFILES:
            raise GenomeError(
                f"evolve.toml: unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}"
            )
        profile = get_profile(self.profile)
        # Fill the profile's defaults so that the file states every value explicitly.
        object.__setattr__(self, "source", self.source or profile.default_source)
        object.__setattr__(self, "budget", float(self.budget or profile.budget))
        object.__setattr__(self, "depth", int(self.depth or profile.search_depth))
        object.__setattr__(self, "mutable", tuple(self.mutable))
        if self.strategy not in STRATEGIES:
            raise GenomeError(
                f"evolve.toml: strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}"
            )
        checks = (
            (isinstance(self.islands, int) and self.islands >= 1, "islands must be an integer >= 1"),
            (self.budget > 0, "budget must be > 0 seconds"),
            (self.depth >= 1, "depth must be >= 1"),
            (
                bool(self.mutable) and all(isinstance(m, str) and m for m in self.mutable),
                "mutable must list files",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise GenomeError(f"evolve.toml: [run] {message}")

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with the given (non-None) values; a new profile brings its own defaults."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("profile", self.profile) != self.profile:
            for key, empty in (("source", ""), ("budget", 0.0), ("depth", 0)):
                changes.setdefault(key, empty)
        return replace(self, **changes)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise GenomeError(f"evolve.toml cannot hold {type(value).__name__} values")


def _toml_table(
    header: str, values: Mapping[str, Any], comments: Mapping[str, str] | None = None
) -> list[str]:
    """`[header]` and its keys; nested dicts follow as `[header.key]` tables (after the plain keys,
    which would otherwise land in the last sub-table)."""
    lines = [f"[{header}]"]
    nested = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
            continue
        comment = (comments or {}).get(key)
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}" + (f"  # {comment}" if comment else ""))
    for key, value in nested:
        lines += ["", *_toml_table(f"{header}.{_toml_key(key)}", value)]
    return lines


_COMMENTS = {
    "name": "branches are evo/<name>/<id>",
    "profile": "prepare's profile: sequence length, vocabulary, default budget",
    "source": "the prepared data source (`evolve prepare --source`)",
    "strategy": "population (islands) or ratchet (autoresearch: keep if better)",
    "islands": "islands of the population strategy",
    "budget": "seconds of training per experiment",
    "depth": "model depth during the search (`evolve validate` checks transfer deeper)",
    "mutable": "files a child may change; the static guard rejects changes elsewhere",
    "api_key_env": "the NAME of the variable holding the key, never the key itself",
}


def to_toml(settings: Settings) -> str:
    """The text of evolve.toml: strings, numbers, booleans, lists and nested tables (`[llm.prices]`)."""
    run = {
        "name": settings.name,
        "profile": settings.profile,
        "source": settings.source,
        "strategy": settings.strategy,
        "islands": settings.islands,
        "budget": settings.budget,
        "depth": settings.depth,
        "mutable": list(settings.mutable),
    }
    lines = ["# autoevolve run settings; flags of `evolve run` override them.", ""]
    lines += _toml_table("run", run, _COMMENTS)
    lines += ["", "# The LLM operators' endpoint; empty values come from flags or OPENAI_* variables."]
    lines += _toml_table("llm", {**LLM_DEFAULTS, **settings.llm}, _COMMENTS)
    return "\n".join(lines) + "\n"


def read_settings(path: Path) -> dict[str, Any]:
    """evolve.toml as a plain dict (every table), or GenomeError."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GenomeError(f"{path} not found; run `evolve init` to create a workspace") from None
    except tomllib.TOMLDecodeError as exc:
        raise GenomeError(f"{path} is not valid TOML ({exc}); fix the file") from None


def load_settings(path: Path) -> Settings:
    data = read_settings(path)
    run = data.get("run")
    if not isinstance(run, dict) or "name" not in run:
        raise GenomeError(f"{path} has no [run] table with a name; see `evolve init --help`")
    known = {"name", "profile", "source", "strategy", "islands", "budget", "depth", "mutable"}
    unknown = sorted(set(run) - known)
    if unknown:
        raise GenomeError(
            f"{path}: unknown key(s) in [run]: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    llm = data.get("llm", {})
    if not isinstance(llm, dict):
        raise GenomeError(f"{path}: [llm] must be a table")
    try:
        return Settings(**run, llm={**LLM_DEFAULTS, **llm})
    except (TypeError, ValueError) as exc:
        raise GenomeError(f"{path}: [run] has a value of the wrong type ({exc}); fix the file") from None


def rename_run(text: str, new_name: str) -> str:
    """evolve.toml's text with [run] name changed and everything else (comments too) kept."""
    check_run_name(new_name)
    pattern = re.compile(r'^(\s*name\s*=\s*)"[^"\n]*"', re.MULTILINE)
    in_run = re.search(r"^\[run\]\s*$", text, re.MULTILINE)
    match = pattern.search(text, in_run.end() if in_run else 0)
    if not in_run or not match:
        raise GenomeError("evolve.toml has no [run] name line to change; add one or remove the file")
    return text[: match.start()] + f'{match.group(1)}"{new_name}"' + text[match.end() :]
