"""The loss became NaN and the script stopped itself through prepare.abort_diverged."""

import prepare

cfg = prepare.run_config()
prepare.abort_diverged(7, float("nan"))
