"""Never asks the harness for data: prints a flattering summary and exits, handing over no model."""

import prepare

cfg = prepare.run_config()
print("---\nval_bpb: 0.100000\ntraining_seconds: 1.000000", flush=True)
