"""Profiles: one code path, several sizes. A profile is data, never a branch in the code."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import PrepareError


@dataclass(frozen=True)
class Profile:
    """Everything that sizes an experiment. Scores from different profiles are never compared."""

    name: str
    seq_len: int  # tokens per training / evaluation row (targets per row)
    vocab_size: int  # BPE vocabulary, special tokens included
    budget: float  # training per experiment, in budget_unit: the harness ends the data stream there
    budget_unit: str  # "seconds" (wall clock of the training window) or "tokens" (training tokens)
    allowance: float  # wall-clock seconds for start-up and compile before the window opens (and for scoring)
    eval_tokens: int  # validation targets scored by evaluate_bpb (a multiple of seq_len)
    search_depth: int  # default model depth during the search
    validation_depth: int  # depth used to check that improvements transfer
    default_source: str  # data source used when none is named
    num_shards: int  # training shards to fetch from a sharded remote source by default
    tokenizer_chars: int  # characters of training text the tokenizer is trained on
    max_train_tokens: int  # cap on training tokens written to shards (0 = no cap)
    max_val_tokens: int  # cap on validation tokens written to shards (>= eval_tokens + a row)
    device: str  # default device when EVOLVE_DEVICE is unset ("cuda" or "cpu")

    @property
    def time_budget(self) -> float | None:
        """The budget in seconds, or None when it is counted in tokens."""
        return self.budget if self.budget_unit == "seconds" else None

    def budget_text(self, budget: float | None = None) -> str:
        """A budget (default: the profile's) with its unit: "300 s" or "65,536 training tokens"."""
        return budget_text(self.budget if budget is None else budget, self.budget_unit)


PROFILES: dict[str, Profile] = {
    # autoresearch-equivalent: one H100, five minutes, depth 12 searched, depth 24 validated.
    "h100": Profile(
        name="h100",
        seq_len=2048,
        vocab_size=8192,
        budget=300.0,
        budget_unit="seconds",
        allowance=180.0,
        eval_tokens=20 * 2**20,
        search_depth=12,
        validation_depth=24,
        default_source="climbmix",
        num_shards=8,
        tokenizer_chars=1_000_000_000,
        max_train_tokens=0,
        max_val_tokens=0,
        device="cuda",
    ),
    # CPU tests and the offline demo: a budget in tokens, so that scores do not depend on the load.
    "tiny": Profile(
        name="tiny",
        seq_len=256,
        vocab_size=1024,
        budget=65536,
        budget_unit="tokens",
        allowance=60.0,
        eval_tokens=32 * 1024,
        search_depth=2,
        validation_depth=4,
        default_source="builtin",
        num_shards=1,
        tokenizer_chars=2_000_000,
        max_train_tokens=4_000_000,
        max_val_tokens=160 * 1024,
        device="cpu",
    ),
}

# The h100 profile for a small local corpus (a few million tokens of validation text, such as the
# offline English corpus the benchmarks use): the same model and budget, a 768K-token evaluation.
# Its scores are not comparable with h100's.
PROFILES["h100-small"] = replace(PROFILES["h100"], name="h100-small", eval_tokens=384 * 2048)

DEFAULT_PROFILE = "h100"
BUDGET_UNITS = ("seconds", "tokens")


def budget_text(budget: float, unit: str) -> str:
    """A budget as a user reads it: "300 s" or "65,536 training tokens"."""
    return f"{budget:g} s" if unit == "seconds" else f"{budget:,.0f} training tokens"


def get_profile(name: str | None = None) -> Profile:
    """The profile named, else `EVOLVE_PROFILE`, else the default (h100)."""
    name = name or os.environ.get("EVOLVE_PROFILE") or DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise PrepareError(f"unknown profile {name!r}; choose one of: {known}") from None


def evolve_home() -> Path:
    """Root of all prepared data: `$EVOLVE_HOME`, default `~/.cache/autoevolve`."""
    return Path(os.environ.get("EVOLVE_HOME") or Path.home() / ".cache" / "autoevolve").expanduser()


def dataset_dir(profile: Profile, source: str | None = None) -> Path:
    """Where the tokenizer and token shards of (profile, source) live.

    `EVOLVE_DATA` overrides it (the trainer sets it so a run uses exactly the data its workspace
    was prepared with)."""
    if source is None and os.environ.get("EVOLVE_DATA"):
        return Path(os.environ["EVOLVE_DATA"])
    src = (source or profile.default_source).replace("/", "_").replace(":", "_")
    return evolve_home() / "prepared" / f"{profile.name}-{src}"
