"""prepare: the fixed ground of every experiment.

Profiles, data sources, the tokenizer, token shards, the dataloader, the fixed `evaluate_bpb`
and the run contract that `train.py` reads. Nothing here imports the other packages, and nothing
here changes between the runs of one evolution. Names are loaded on first use, so that
`import prepare` stays cheap for the CLI and for `train.py`.
"""

from __future__ import annotations

import importlib

# Eager on purpose (cheap: no torch): the contract arms the in-process tripwire at import, before
# train.py's first line runs (the trainer imports prepare first).
from . import contract as _contract  # noqa: F401

_EXPORTS = {
    # profiles and paths
    "Profile": "profiles",
    "PROFILES": "profiles",
    "get_profile": "profiles",
    "evolve_home": "profiles",
    "dataset_dir": "profiles",
    "PrepareError": "errors",
    # the run contract
    "RunConfig": "contract",
    "run_config": "contract",
    "report": "contract",
    "train_loader": "stream",
    "TrainLoader": "stream",
    "abort_diverged": "contract",
    "EXIT_DIVERGED": "contract",
    # tokenizer
    "Tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    # data sources and shards
    "Source": "sources",
    "get_source": "sources",
    "Manifest": "shards",
    "load_manifest": "shards",
    "check_dataset": "shards",
    "prepare_dataset": "pipeline",
    # training-time API
    "DataLoader": "dataloader",
    "make_loader": "dataloader",
    "evaluate_bpb": "metric",
    "package_hash": "integrity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prepare' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
