"""`EngineConfig`: everything one `evolve run` needs besides the workspace and the devices.

Read from evolve.toml (`[run]`, the optional `[search]` table, `[operators.<name>]` tables), then
the flags of `evolve run`; `evolve.engine` re-exports it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from genome.settings import SETTINGS_FILE, read_settings
from genome.workspace import Workspace

from .config_check import check_keys, check_tables, check_values, operator_options
from .errors import EvolveError
from .llm.config import KNOWN_KEYS as LLM_KEYS
from .scheduler import StopConditions

STORE_KEYS = ("backup_minutes", "backups_kept")  # the [store] table


@dataclass(frozen=True)
class EngineConfig:
    """Everything one `evolve run` needs besides the workspace and the devices."""

    profile: str
    budget: float
    depth: int
    source: str
    strategy: str = "population"
    islands: int = 4
    operators: tuple[str, ...] = ()  # empty: every registered operator that can be built here
    baseline_seeds: int = 5  # the baseline's seeds at the start: the first noise model
    max_seeds: int = 4  # the most paired seeds a child is judged on
    alpha: float = 0.05  # P(accept) of a child that changes nothing (the test's error rate)
    gain: float = 1.75  # the gain, in paired-difference sds, the test's lines are shaped for
    futility: float = -0.5  # how soon a child that does not look better is dropped (< 0)
    confirm_seeds: int = 3  # fresh seeds a new best elite is confirmed on
    migrate_every: int = 20
    seed: int = 0
    ahead: int = 2  # ready children beyond one per device
    proposers: int = 2  # proposal threads
    elites: int = 8  # elites shown to an operator
    allowance: float | None = None  # extra seconds per run beyond the budget (profile's default)
    backup_minutes: float = 30.0  # [store]: an online backup of the store this often, and at the end
    backups_kept: int = 5  # [store]: the newest backups kept
    stop: StopConditions = field(default_factory=StopConditions)
    operator_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_workspace(cls, workspace: Workspace, **overrides: Any) -> EngineConfig:
        """evolve.toml's values, then the non-None `overrides` (the flags of `evolve run`)."""
        settings = workspace.settings
        profile = overrides.pop("profile", None)
        if profile is not None and profile != settings.profile:
            settings = settings.with_changes(profile=profile)
        data = read_settings(workspace.root / SETTINGS_FILE)
        check_tables(data, operator_options())
        search = dict(data.get("search") or {})
        store = dict(data.get("store") or {})
        known = {f.name for f in fields(cls)} - {
            "profile",
            "budget",
            "depth",
            "source",
            "stop",
            "operator_options",
            *STORE_KEYS,
        }
        check_keys("search", search, known)
        check_keys("store", store, STORE_KEYS)
        check_keys("llm", dict(data.get("llm") or {}), LLM_KEYS)  # its values: evolve.llm.config
        hints = typing.get_type_hints(cls)
        check_values("search", search, hints)
        check_values("store", store, hints)
        values: dict[str, Any] = dict(
            profile=settings.profile,
            budget=settings.budget,
            depth=settings.depth,
            source=settings.source,
            strategy=settings.strategy,
            islands=settings.islands,
            operator_options={
                k: dict(v) for k, v in (data.get("operators") or {}).items() if isinstance(v, dict)
            },
        )
        values.update(search)
        values.update(store)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("operators"), (list, str)):
            ops = values["operators"]
            values["operators"] = tuple(ops.split(",") if isinstance(ops, str) else ops)
        try:
            config = cls(**values)
        except TypeError as exc:
            raise EvolveError(f"bad setting: {exc}") from None
        config.check()
        return config

    def check(self) -> None:
        problems = [
            (self.strategy in ("population", "ratchet"), "strategy must be population or ratchet"),
            (self.islands >= 1, "islands must be >= 1"),
            (self.budget > 0, "budget must be > 0"),
            (self.depth >= 1, "depth must be >= 1"),
            (self.baseline_seeds >= 2, "baseline seeds must be >= 2 (the noise model needs two runs)"),
            (self.max_seeds >= 2, "max seeds must be >= 2 (no child is accepted on fewer)"),
            (0 < self.alpha < 0.5, "alpha must be in (0, 0.5)"),
            (self.gain > 0, "gain must be > 0"),
            (self.futility < 0, "futility must be < 0"),
            (self.confirm_seeds >= 1, "confirm seeds must be >= 1"),
            (self.backup_minutes > 0, "[store] backup_minutes must be > 0"),
            (self.backups_kept >= 1, "[store] backups_kept must be >= 1"),
        ]
        for ok, message in problems:
            if not ok:
                raise EvolveError(f"{message}; fix evolve.toml or the flag")
        for name, options in self.operator_options.items():
            w = options.get("weight", 1.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                raise EvolveError(f"evolve.toml: [operators.{name}] weight must be a number >= 0, not {w!r}")

    def weight(self, name: str) -> float:
        """`[operators.NAME] weight`: a factor on the operator's share of the draws (0: left out)."""
        return float(self.operator_options.get(name, {}).get("weight", 1.0))

    @property
    def weights(self) -> dict[str, float]:
        """The operators whose weight is not 1."""
        return {n: self.weight(n) for n in self.operator_options if self.weight(n) != 1.0}
