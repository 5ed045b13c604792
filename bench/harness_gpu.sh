#!/usr/bin/env bash
# One device call for the harness on a GPU (issue "The harness owns the experiment"):
#   1. bubblewrap from the carried .deb (.carry/bubblewrap_*.deb) and a check that it makes namespaces;
#   2. the trainer's GPU tests (the real baseline through trainer.run on CUDA, in its sandbox);
#   3. bench/harness_gpu.py on the carried h100-small dataset (.carry/data.tgz): the honest baseline,
#      cold and warm, beside the budget-gaming variants; with .carry/old (a checkout of the earlier
#      harness) also the earlier harness's honest runs, for the overhead.
# Carry: .whl (rustbpe, cp312), .carry. Figures land in $OUT. STAGES (default "1 2 3"), DEPTH, BUDGET,
# ONLY (run labels for harness_gpu.py --only) and OLD=0 trim the call.
set -u
. bench/device_env.sh
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/bw
dpkg -x .carry/bubblewrap_*.deb /tmp/bw && export PATH=/tmp/bw/usr/bin:$PATH
bwrap --version
bwrap --unshare-all --die-with-parent --ro-bind / / --proc /proc --dev /dev true && echo "namespaces: ok"
tar xzf .carry/data.tgz -C /tmp
DATA=$(ls -d /tmp/h100-small-*)
stages=${STAGES:-1 2 3}
case " $stages " in *" 2 "*)
  timeout 240 python -m pytest -q -p no:cacheprovider tests/trainer/test_gpu.py -x 2>&1 | tail -30 ;;
esac
case " $stages " in *" 3 "*)
  old=()
  [ "${OLD:-1}" = 1 ] && [ -d .carry/old ] && old=(--old "$PWD/.carry/old")
  python bench/harness_gpu.py --data "$DATA" --depth "${DEPTH:-8}" --budget "${BUDGET:-30}" \
    --only "${ONLY:-}" "${old[@]}" --out "$OUT/harness_gpu.json" 2>&1 | grep -v "^\s*$" | tail -150 ;;
esac
ls -la "$OUT"
