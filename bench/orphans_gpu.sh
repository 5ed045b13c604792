#!/bin/bash
# No orphans on a GPU (issue 17, point 5), in one device call of about 3 minutes: SIGKILL `evolve run`
# while the baseline's run trains on the GPU, once sandboxed (bubblewrap) and once with
# EVOLVE_ISOLATION=none; within seconds no compute process is on the GPU and none of the run's
# processes lives; then `evolve run` resumes to the end, bench/chaos.py's checks and `evolve doctor`
# pass. bench/orphans_gpu.py does the work (its docstring says what is measured); the JSON is
# $OUT/orphans_gpu.json (docs/bench/orphans_gpu.json).
# On your own GPU host: bash bench/orphans_gpu.sh (autoevolve and bubblewrap installed, the shared
# corpus laid out in /tmp/corpus by `python bench/shared_corpus.py ../shared/data /tmp/corpus`, or
# SOURCE=...). On CPU, no nvidia-smi needed: SMOKE=1 bash bench/orphans_gpu.sh (tiny profile, builtin
# source, processes only).
# On the device machine of this workplace: carry .whl (cp312 wheels: rustbpe, gitpython, gitdb, smmap,
# optuna, sqlalchemy, alembic, colorlog, mako) and .carry (corpus.tgz: bench/shared_corpus.py's output
# tarred as corpus/; bubblewrap_*.deb from `apt-get download bubblewrap`), then bash bench/orphans_gpu.sh.
# Env: PROFILE, SOURCE, GPUS, BUDGET, KILL_AFTER, ISOLATION (bwrap,none), OUT (/tmp/out), W (/tmp/orphans).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; W=${W:-/tmp/orphans}
source bench/device_env.sh
if [ -n "${SMOKE:-}" ]; then
  PROFILE=${PROFILE:-tiny}; SOURCE=${SOURCE:-builtin}; GPUS=${GPUS:-cpu:1}; BUDGET=${BUDGET:-200000}
  KILL_AFTER=${KILL_AFTER:-2}
fi
PROFILE=${PROFILE:-h100-small}; SOURCE=${SOURCE:-local:/tmp/corpus}; GPUS=${GPUS:-0}; BUDGET=${BUDGET:-30}
if ! command -v bwrap >/dev/null && ls .carry/bubblewrap_*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/bw && dpkg -x .carry/bubblewrap_*.deb /tmp/bw && export PATH=/tmp/bw/usr/bin:$PATH
fi
ISOLATION=${ISOLATION:-bwrap,none}; RESUME=bwrap
if ! bwrap --unshare-all --die-with-parent --ro-bind / / --proc /proc --dev /dev true; then
  echo "bubblewrap is missing or makes no namespaces here: the trials run without isolation"
  ISOLATION=none; RESUME=none
fi
git --version || { echo "git is missing: evolve init needs it"; exit 1; }
python3 bench/orphans_gpu.py --profile "$PROFILE" --source "$SOURCE" --gpus "$GPUS" --budget "$BUDGET" \
  --kill-after "${KILL_AFTER:-5}" --isolation "$ISOLATION" --resume-isolation "$RESUME" --workdir "$W" \
  --out "$OUT/orphans_gpu.json" 2>&1 | tee "$OUT/orphans_gpu.log"
rc=${PIPESTATUS[0]}
cp "$W"/logs/run-*.log "$OUT"/ 2>/dev/null
for f in "$W"/logs/run-*.log; do echo "== $f"; grep -vE "^ *step [0-9]" "$f" | tail -8; done
nvidia-smi 2>/dev/null | tail -8
exit $rc
