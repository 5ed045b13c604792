#!/bin/bash
# The multi-GPU figures in one go, sized for a short lease of a 4-GPU host (about 6 minutes):
#   1. bench/scaling.py: experiments per hour and duty cycle with all GPUs, then with 1 (60 s budgets);
#   2. beside the 1-GPU session, on two of the GPUs it leaves idle, `evolve validate --depth 24
#      --gpus-per-run 2 --pending` on the same workspace (validation next to a live run, torchrun);
#   3. while the first session's baseline trains, a depth-24 torchrun warm-up on those two GPUs
#      fills the compile cache, so the validation runs are warm.
# On your own host: PROFILE=h100 SOURCE=climbmix bash bench/multi_gpu.sh (needs autoevolve installed).
# On the device machine of this workplace: carry .whl (the cp312 wheels the machine lacks: rustbpe,
# gitpython, gitdb, smmap, optuna and its needs, rich and its needs, openai and its needs) and
# .carry/corpus.tgz (bench/shared_corpus.py's output, tarred as corpus/), then `bash bench/multi_gpu.sh`.
# Env: PROFILE (h100-small), SOURCE (local:/tmp/corpus), GPUS (0,1,2,3), VGPUS (2,3), BUDGET (60),
# MINUTES (window per GPU count, 1), VBUDGET (20), VDEPTH (24), VTIMEOUT (150), OUT, W (workdir).
set -u
PROFILE=${PROFILE:-h100-small}; GPUS=${GPUS:-0,1,2,3}; VGPUS=${VGPUS:-2,3}; BUDGET=${BUDGET:-60}
MINUTES=${MINUTES:-1}; VBUDGET=${VBUDGET:-20}; VDEPTH=${VDEPTH:-24}; VTIMEOUT=${VTIMEOUT:-150}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; W=${W:-/tmp/sc}; rm -rf $W
source bench/device_env.sh
SOURCE=${SOURCE:-local:/tmp/corpus}
T0=$(date +%s)
python3 - "$PROFILE" "$SOURCE" "$VGPUS" "$VDEPTH" <<'PY' > $OUT/warm.log 2>&1 &
# warm the compile cache at the validation depth on the validation GPUs while the baseline trains
import sys, tempfile, shutil, pathlib
from prepare.pipeline import prepare_dataset
from prepare.profiles import get_profile
from trainer import runner
profile, source, gpus, depth = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
data = prepare_dataset(get_profile(profile), source=source).path
wt = pathlib.Path(tempfile.mkdtemp(prefix="warm-")); shutil.copy("genome/baseline/train.py", wt)
r = runner.run(wt, depth=depth, budget=5, seed=0, devices=gpus, profile=profile, data_dir=data)
print("warm-up", r.status, r.reason, round(r.wall_seconds, 1))
PY
WARM=$!
sleep 1
python3 bench/scaling.py --profile $PROFILE --source $SOURCE --gpus $GPUS --counts all,1 --budget $BUDGET \
  --minutes $MINUTES --baseline-seeds 2 --workdir $W --out $OUT/scaling.json > $OUT/scaling.log 2>&1 &
SC=$!
until grep -q "^\[scaling\] 1 device" $OUT/scaling.log 2>/dev/null || ! kill -0 $SC 2>/dev/null; do sleep 1; done
wait $WARM; cat $OUT/warm.log | tail -3
echo "validation starts at +$(( $(date +%s) - T0 )) s"
(cd $W/ws && timeout $VTIMEOUT python3 -c "from evolve.cli import main; main()" validate --depth $VDEPTH --top 1 \
  --budget $VBUDGET --seeds 1 --gpus $VGPUS --gpus-per-run 2 --pending) > $OUT/validate.log 2>&1
echo "validate rc=$? at +$(( $(date +%s) - T0 )) s"; grep -v "^ *step" $OUT/validate.log | tail -25
wait $SC; echo "scaling rc=$? at +$(( $(date +%s) - T0 )) s"; grep -v "step " $OUT/scaling.log | tail -25
(cd $W/ws && python3 -c "from evolve.cli import main; main()" status) > $OUT/status.log 2>&1; tail -30 $OUT/status.log
