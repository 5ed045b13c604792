# Sourced by the device-machine benches (multi_gpu.sh, validate_2gpu.sh): on a machine that lacks
# autoevolve's dependencies, install the carried cp312 wheels in .whl into /tmp/site and unpack the
# carried corpus (.carry/corpus.tgz) into /tmp/corpus; elsewhere (SMOKE=1, or no .whl) use what is
# installed. Either way the checkout is importable and Python's output unbuffered.
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD EVOLVE_HOME=/tmp/home
  [ -f .carry/corpus.tgz ] && tar xzf .carry/corpus.tgz -C /tmp
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
