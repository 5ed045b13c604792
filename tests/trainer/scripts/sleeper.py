"""Records when it ran and on which device to $MARK_DIR, sleeps a moment, and reports."""

import json
import os
import time

import prepare

cfg = prepare.run_config()
start = time.time()
time.sleep(float(os.environ.get("SLEEP", "1.0")))
mark = {
    "start": start,
    "end": time.time(),
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "device": cfg.device,
    "seed": cfg.seed,
    "rank": cfg.rank,
}
with open(os.path.join(os.environ["MARK_DIR"], f"{cfg.seed}-{cfg.rank}.json"), "w") as f:
    json.dump(mark, f)
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 0.5)
