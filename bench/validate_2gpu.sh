#!/bin/bash
# One transfer validation with 2 GPUs per run, end to end, in about 2 minutes: prepare, a short
# search at depth 12 (baseline + 2 children), then `evolve validate --depth 24 --gpus-per-run 2`.
# torch.compile is switched off in the workspace's train.py (COMPILE = False) so that no run pays
# a cold compile: this checks the path (torchrun, store, verdict), not the speed. The child
# validated is the best of the two at depth 12, named with --id (kept by the search or not).
# Env: PROFILE (h100-small), SOURCE (local:/tmp/corpus), GPUS (0,1), BUDGET (10), VDEPTH (24), OUT.
set -u
PROFILE=${PROFILE:-h100-small}; SOURCE=${SOURCE:-local:/tmp/corpus}; GPUS=${GPUS:-0,1}
BUDGET=${BUDGET:-10}; VDEPTH=${VDEPTH:-24}; OUT=${OUT:-/tmp/out}; W=${W:-/tmp/v2}
mkdir -p $OUT; rm -rf $W; T0=$(date +%s)
el() { echo "[+$(($(date +%s) - T0)) s] $*"; }
ev() { python3 -c "from evolve.cli import main; main()" "$@"; }
source bench/device_env.sh
ev prepare --profile $PROFILE --source $SOURCE > $OUT/prepare.log 2>&1 || { tail $OUT/prepare.log; exit 1; }
el prepared
sed 's/^COMPILE = True/COMPILE = False/' genome/baseline/train.py > /tmp/train_nocompile.py
ev init $W --run v --profile $PROFILE --source $SOURCE --budget $BUDGET --train /tmp/train_nocompile.py > $OUT/init.log 2>&1 || { cat $OUT/init.log; exit 1; }
ev run -w $W --gpus $GPUS --baseline-seeds 2 --max-experiments 2 --operators optuna_tweak --interval 15 > $OUT/run.log 2>&1
el "search rc=$?"
# The best child at the search depth, whatever the search decided: `--id` makes the path certain.
BEST=$(python3 - $W <<'PY'
import sys
from evolve.store import Store
from genome.workspace import open_workspace
ws = open_workspace(sys.argv[1])
with Store(ws.state_dir / "evolve.db", readonly=True) as store:
    print(next(r.individual.id for r in store.leaderboard(ws.settings.depth, ws.run, limit=None) if r.individual.parents))
PY
)
grep -E "ok val_bpb|accept|reject|reevaluate|session end" $OUT/run.log | tail -12
ev validate -w $W --depth $VDEPTH --id $BEST --seeds 1 --budget $BUDGET --gpus $GPUS --gpus-per-run 2 --json > $OUT/validate.json 2> $OUT/validate.log
el "validate rc=$?"; tail -5 $OUT/validate.log; cat $OUT/validate.json
ev status -w $W > $OUT/status.log 2>&1; grep -A12 "transfer" $OUT/status.log | head -16
