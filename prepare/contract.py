"""The run contract between the trainer and `train.py`.

The trainer starts `train.py` in a sandbox with `EVOLVE_*` variables; `train.py` reads them only
through `run_config()`, trains on `prepare.train_loader(...)` (the harness serves the data and
ends it when the budget is spent), and may end with `report(...)`, which prints a summary block
for humans. Nothing `train.py` prints or computes is trusted: the trainer measures the training
window itself and a separate evaluator scores the handed-over model (see prepare.stream and
prepare.artifact). There is no key and no result file to forge.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PrepareError
from .profiles import BUDGET_UNITS, Profile, dataset_dir, get_profile

# Exit code of a run that stopped itself because its loss became NaN or exploded.
EXIT_DIVERGED = 86
# Where the trainer tells prepare which folders the run may write and read (the in-process tripwire).
WRITABLE_VAR = "EVOLVE_WRITABLE"
READABLE_VAR = "EVOLVE_READABLE"
SECRET_VAR = "EVOLVE_SECRET"  # files never read, even where their folder is readable
HIDDEN_VAR = "EVOLVE_HIDDEN"  # the harness's own folders (the store, git, logs): never touched

SUMMARY_KEYS = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
)


def _arm_tripwire() -> None:
    """Install the tripwire (prepare.sandbox) when the trainer asked for it; train.py imports us first."""
    raw = os.environ.get(WRITABLE_VAR)
    if raw:
        from . import sandbox

        split = lambda name: tuple(p for p in os.environ.get(name, "").split(os.pathsep) if p)  # noqa: E731
        sandbox.install(
            sandbox.Policy(
                writable=split(WRITABLE_VAR),
                readable=split(READABLE_VAR),
                secret=split(SECRET_VAR),
                hidden=split(HIDDEN_VAR),
            )  # fmt: skip
        )


_arm_tripwire()


@dataclass(frozen=True)
class RunConfig:
    """What one run is asked to do. `train.py` must take these, never parse its own."""

    depth: int
    budget: float  # in budget_unit; the harness enforces it, train.py needs it only by hand
    budget_unit: str  # "seconds" or "tokens"
    seed: int
    profile: Profile
    device: str
    data_dir: Path
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def _env_number(name: str, kind, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise PrepareError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise PrepareError(f"{name}={raw!r} must be finite")
    return value


def run_config() -> RunConfig:
    """Depth, budget, seed, profile and device from the environment.

    `EVOLVE_DEPTH`, `EVOLVE_BUDGET` and `EVOLVE_BUDGET_UNIT`, `EVOLVE_SEED`, `EVOLVE_PROFILE`,
    `EVOLVE_DEVICE` (and `EVOLVE_DATA`), with the profile's defaults; the rank and world size
    come from torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`."""
    profile = get_profile()
    depth = _env_number("EVOLVE_DEPTH", int, profile.search_depth)
    unit = os.environ.get("EVOLVE_BUDGET_UNIT") or profile.budget_unit
    if unit not in BUDGET_UNITS:
        raise PrepareError(f"EVOLVE_BUDGET_UNIT must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
    budget = _env_number("EVOLVE_BUDGET", float, profile.budget if unit == profile.budget_unit else None)
    if budget is None:
        raise PrepareError(
            f"EVOLVE_BUDGET_UNIT={unit} needs EVOLVE_BUDGET (the profile's budget is in {profile.budget_unit})"
        )
    seed = _env_number("EVOLVE_SEED", int, 42)
    if depth < 1:
        raise PrepareError(f"EVOLVE_DEPTH must be >= 1, got {depth}")
    if budget <= 0:
        raise PrepareError(f"EVOLVE_BUDGET must be > 0, got {budget}")
    return RunConfig(
        depth=depth,
        budget=budget,
        budget_unit=unit,
        seed=seed,
        profile=profile,
        device=os.environ.get("EVOLVE_DEVICE") or profile.device,
        data_dir=dataset_dir(profile),
        rank=_env_number("RANK", int, 0),
        local_rank=_env_number("LOCAL_RANK", int, 0),
        world_size=_env_number("WORLD_SIZE", int, 1),
    )


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


def report(cfg: RunConfig | None = None, **metrics) -> dict:
    """Print the summary block (`---`, then `key: value`), on rank 0. For humans and the log:
    the trainer records what it measured itself (and keeps these as the run's own notes)."""
    cfg = cfg or run_config()
    payload = {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    payload.setdefault("depth", cfg.depth)
    if cfg.is_master:
        print("---", flush=True)
        ordered = [k for k in SUMMARY_KEYS if k in payload] + sorted(
            k for k in payload if k not in SUMMARY_KEYS
        )
        for key in ordered:
            print(f"{key}: {_format(payload[key])}", flush=True)
    return payload


def config_dict(cfg: RunConfig) -> dict:
    """A JSON-friendly view of a RunConfig (for logs)."""
    d = asdict(cfg)
    d["profile"] = cfg.profile.name
    d["data_dir"] = str(cfg.data_dir)
    return d


def abort_diverged(step: int, loss: float) -> None:
    """End the run at once because the loss is NaN or exploded; the trainer reads it as `diverged`."""
    import sys

    print(f"DIVERGED: loss {loss} at step {step}; stopping the run", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_DIVERGED)
