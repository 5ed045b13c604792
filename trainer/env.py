"""The scrubbed environment a training run gets: an allow-list of what training needs, no secrets.

`train.py` is code an LLM wrote. It must not see API keys or tokens of any kind, so its
environment starts empty and only names on the allow-list are copied from the parent; a name that
looks like a secret is dropped even when the allow-list would take it (deny wins).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import TrainerError

# Copied verbatim when present in the parent.
ALLOW_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "XDG_CACHE_HOME",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        # multicast off on the device machines (see KINDS.md); kept whenever the parent sets them
        "NCCL_NVLS_ENABLE",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST",
        "NVSHMEM_DISABLE_NVLS",
    }
)

# Copied when the name starts with one of these: locale, CUDA/NCCL/torch/Triton settings and caches.
ALLOW_PREFIXES = (
    "LC_",
    "CUDA_",
    "NCCL_",
    "NVSHMEM_",
    "NVIDIA_",
    "CUBLAS_",
    "CUDNN_",
    "TORCH_",
    "TORCHINDUCTOR_",
    "PYTORCH_",
    "TRITON_",
    "GLOO_",
)

# A name containing any of these never reaches the child, whatever the allow-list says.
DENY_PARTS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
    "OPENAI",
    "ANTHROPIC",
    "HF_",
    "HUGGING",
    "AWS_",
    "GITHUB",
    "WANDB",
)

# Set by the trainer itself; neither inherited nor accepted from extra_env, so a caller cannot
# quietly run a different depth than the one the result will be judged against.
RESERVED_PREFIXES = ("EVOLVE_",)
RESERVED_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED"})


def is_denied(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in DENY_PARTS)


def is_allowed(name: str) -> bool:
    if is_denied(name) or name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return False
    return name in ALLOW_NAMES or name.startswith(ALLOW_PREFIXES)


def scrubbed(parent: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed, non-secret part of `parent`."""
    return {name: value for name, value in parent.items() if is_allowed(name)}


def check_extra(extra: Mapping[str, str] | None) -> dict[str, str]:
    """Validate the caller's extra variables: no secrets, none of the trainer's own."""
    extra = dict(extra or {})
    for name, value in extra.items():
        if not isinstance(value, str):
            raise TrainerError(f"extra_env[{name!r}] must be a string, got {type(value).__name__}")
        if is_denied(name):
            raise TrainerError(f"extra_env may not pass {name!r} to train.py: it looks like a secret")
        if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
            raise TrainerError(f"extra_env may not set {name!r}: the trainer sets it from run()'s arguments")
    return extra


def build_env(
    parent: Mapping[str, str], contract: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's whole environment: scrubbed parent, then the caller's extras, then the contract."""
    env = scrubbed(parent)
    env.update(check_extra(extra))
    env.update(contract)
    return env
