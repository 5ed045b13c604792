"""The run contract between the trainer and `train.py`.

The trainer starts `python train.py` with `EVOLVE_*` variables; `train.py` reads them only through
`run_config()` and ends with `report(...)`, which prints the summary block and writes the same
data as JSON to the result path. The JSON carries an HMAC made with a per-run key and a `harness`
block that only prepare writes: what `evaluate_bpb` returned, what the sandbox refused, and how
long the process had been running. The key and the sandbox policy come through an inherited pipe
(`EVOLVE_RESULT_KEY_FD`) that prepare reads and closes at import, before train.py's first line
runs (the trainer imports prepare first), so neither the environment nor /proc/self/environ holds
the key, and a result file written by anything other than `report` is detected as invalid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PrepareError
from .profiles import Profile, dataset_dir, get_profile

KEY_FD_VAR = "EVOLVE_RESULT_KEY_FD"
_STARTED = time.time()  # the trainer imports prepare first, so this is the process's start


def _read_handover() -> dict:
    """The trainer's sealed note (signing key and sandbox policy), read once from its pipe.

    Under torchrun the workers do not inherit the pipe, so rank 0 opens it through its parent,
    the torchrun agent, which did. See docs/SECURITY.md for what an in-process secret cannot stop."""
    raw = os.environ.pop(KEY_FD_VAR, "")
    if not raw.isdigit():
        return {}
    fd = int(raw)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        if os.environ.get("RANK", "0") != "0":
            return {}
        try:
            fd = os.open(f"/proc/{os.getppid()}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return {}
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:  # not our pipe after all, or it was emptied by someone else
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        note = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def _seal() -> bytes:
    note = _read_handover()
    if isinstance(note.get("sandbox"), dict):
        from . import sandbox

        sandbox.install(sandbox.Policy.from_json(note["sandbox"]))
    return str(note.get("key", "")).encode()


# Read once, at import; kept only here (docs/SECURITY.md says what an in-process secret can't stop).
_RESULT_KEY: bytes = _seal()
_EVALUATIONS: list[dict] = []  # one entry per evaluate_bpb call in this process

# Exit code of a run that stopped itself because its loss became NaN or exploded.
EXIT_DIVERGED = 86

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


@dataclass(frozen=True)
class RunConfig:
    """What one run is asked to do. `train.py` must take these, never parse its own."""

    depth: int
    time_budget: float
    seed: int
    profile: Profile
    device: str
    result_path: Path | None
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
    """Depth, time budget, seed, profile, device and result path from the environment.

    `EVOLVE_DEPTH`, `EVOLVE_TIME_BUDGET`, `EVOLVE_SEED`, `EVOLVE_PROFILE`, `EVOLVE_DEVICE`,
    `EVOLVE_RESULT` (and `EVOLVE_DATA`), with the profile's defaults; the rank and world size
    come from torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`."""
    profile = get_profile()
    depth = _env_number("EVOLVE_DEPTH", int, profile.search_depth)
    budget = _env_number("EVOLVE_TIME_BUDGET", float, profile.time_budget)
    seed = _env_number("EVOLVE_SEED", int, 42)
    if depth < 1:
        raise PrepareError(f"EVOLVE_DEPTH must be >= 1, got {depth}")
    if budget <= 0:
        raise PrepareError(f"EVOLVE_TIME_BUDGET must be > 0, got {budget}")
    device = os.environ.get("EVOLVE_DEVICE") or profile.device
    result = os.environ.get("EVOLVE_RESULT")
    world_size = _env_number("WORLD_SIZE", int, 1)
    rank = _env_number("RANK", int, 0)
    local_rank = _env_number("LOCAL_RANK", int, 0)
    return RunConfig(
        depth=depth,
        time_budget=budget,
        seed=seed,
        profile=profile,
        device=device,
        result_path=Path(result) if result else None,
        data_dir=dataset_dir(profile),
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(payload: dict, key: bytes) -> str:
    """HMAC-SHA256 of the canonical JSON of `payload` (used by report and checked by the trainer)."""
    return hmac.new(key, _canonical(payload), hashlib.sha256).hexdigest()


def verify(document: dict, key: bytes) -> bool:
    """True when `document` (a parsed result file) was written by `report` with `key`."""
    signature = document.get("signature")
    payload = {k: v for k, v in document.items() if k != "signature"}
    return isinstance(signature, str) and hmac.compare_digest(signature, sign(payload, key))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


def report(cfg: RunConfig | None = None, **metrics) -> dict:
    """Print the summary block (`---`, then `key: value`) and write it as JSON to the result path.

    Call it once, at the end of `train.py`, on every rank (only rank 0 prints and writes). The
    JSON also records the depth, budget, seed and profile that the run was configured with."""
    cfg = cfg or run_config()
    payload = {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    payload.setdefault("depth", cfg.depth)
    payload["config"] = {
        "depth": cfg.depth,
        "time_budget": cfg.time_budget,
        "seed": cfg.seed,
        "profile": cfg.profile.name,
        "world_size": cfg.world_size,
    }
    if not cfg.is_master:
        return payload
    from . import sandbox

    harness = {
        "evaluations": list(_EVALUATIONS),
        "denied": sandbox.denied(),
        "elapsed_seconds": time.time() - _STARTED,
    }
    print("---", flush=True)
    ordered = [k for k in SUMMARY_KEYS if k in payload] + sorted(
        k for k in payload if k not in SUMMARY_KEYS and k != "config"
    )
    for key in ordered:
        print(f"{key}: {_format(payload[key])}", flush=True)
    if cfg.result_path is not None:
        document = {**payload, "harness": harness}
        if _RESULT_KEY:
            document["signature"] = sign(document, _RESULT_KEY)
        if not cfg.result_path.parent.is_dir():  # the trainer makes it; a mkdir there is refused
            cfg.result_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfg.result_path.with_suffix(cfg.result_path.suffix + ".tmp")
        tmp.write_text(json.dumps(document, indent=2, default=str))
        os.replace(tmp, cfg.result_path)
    return payload


def record_evaluation(
    val_bpb: float,
    *,
    eval_tokens: int,
    seq_len: int,
    data_dir: str,
    num_params: int,
    leaks_future: bool,
    consistent: bool,
) -> None:
    """Called by `evaluate_bpb` (only): what it scored, so the trainer can check what train.py reports."""
    _EVALUATIONS.append(
        {
            "val_bpb": float(val_bpb),
            "eval_tokens": int(eval_tokens),
            "seq_len": int(seq_len),
            "data_dir": str(data_dir),
            "num_params": int(num_params),
            "leaks_future": bool(leaks_future),
            "consistent": bool(consistent),
        }
    )


def config_dict(cfg: RunConfig) -> dict:
    """A JSON-friendly view of a RunConfig (for logs)."""
    d = asdict(cfg)
    d["profile"] = cfg.profile.name
    d["result_path"] = str(cfg.result_path) if cfg.result_path else None
    d["data_dir"] = str(cfg.data_dir)
    return d


def abort_diverged(step: int, loss: float) -> None:
    """End the run at once because the loss is NaN or exploded; the trainer reads it as `diverged`."""
    import sys

    print(f"DIVERGED: loss {loss} at step {step}; stopping the run", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_DIVERGED)
