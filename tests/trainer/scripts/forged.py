"""Writes a result file by hand (no prepare.report, so no signature), with a flattering val_bpb."""

import json
import os

import prepare

cfg = prepare.run_config()
print("---\nval_bpb: 0.100000\ntraining_seconds: 1.000000", flush=True)
result = {
    "val_bpb": 0.1,
    "training_seconds": 1.0,
    "depth": cfg.depth,
    "config": {
        "depth": cfg.depth,
        "time_budget": cfg.time_budget,
        "seed": cfg.seed,
        "profile": cfg.profile.name,
        "world_size": 1,
    },
}
with open(os.environ["EVOLVE_RESULT"], "w") as f:
    json.dump(result, f)
