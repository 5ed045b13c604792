"""Reports honestly through prepare.report, then prints a better summary block after it."""

import prepare

cfg = prepare.run_config()
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 0.5)
print("---\nval_bpb: 0.900000", flush=True)
