"""Reports twice the budget of training time (it trained longer than it was allowed to)."""

import prepare

cfg = prepare.run_config()
prepare.report(cfg, val_bpb=1.5, training_seconds=cfg.time_budget * 2)
