#!/bin/bash
# make gpu-check: the GPU tests and the GPU benchmarks on this machine, their JSON lines into one file.
# Installs nothing from the network. PYTHON (default .venv/bin/python, else python3) must have rlscope's
# dependencies; RLSCOPE_WHEELS=DIR installs the wheels in DIR first (--no-index, into /tmp/rlscope-site: for a
# machine without network, e.g. ../shared/gpu/wheels). OUT (default gpu-check/) receives gpu-check.jsonl and a log
# per stage. SHAPE (default qwen2.5-1.5b) is the model shape of the benchmarks. DRY=1 runs the same stages on the
# CPU at toy sizes (a check of this script, not of a GPU).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-gpu-check}
SHAPE=${SHAPE:-qwen2.5-1.5b}
mkdir -p "$OUT"
RESULTS="$OUT/gpu-check.jsonl"
: > "$RESULTS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
if [ -n "${RLSCOPE_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/rlscope-site "$RLSCOPE_WHEELS"/*.whl \
    > "$OUT/install.log" 2>&1 || { echo '{"stage": "install", "rc": 1}' >> "$RESULTS"; exit 1; }
  export PYTHONPATH=/tmp/rlscope-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
DEV=cuda; WARGS=""; LARGS="--layers 28"; PARGS="-n 8 --max-new-tokens 128"; OSTEPS=${OVERHEAD_STEPS:-8}; OREP=${OVERHEAD_REPEATS:-2}
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; SHAPE=tiny; WARGS="--layers 1 --svd-n 1536"; LARGS="--layers 1 --rank 4"; PARGS="--prompts 4 -n 2 --repeats 1"; OSTEPS=2; OREP=1
elif ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo '{"stage": "cuda", "available": false}' | tee -a "$RESULTS"; exit 2
fi
$PY -c "import json, torch; print(json.dumps({'stage': 'device', 'name': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'torch': torch.__version__}))" >> "$RESULTS"
stage() {  # stage NAME TIMEOUT CMD...: the last line of a bench's stdout is its JSON
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$RESULTS"
  [ "$name" != tests ] && [ $rc -eq 0 ] && tail -1 "$OUT/$name.log" >> "$RESULTS"
  return 0
}
stage tests "${TESTS_TIMEOUT:-900}" $PY -m pytest -q -m gpu tests/test_gpu.py
grep -E "passed|failed|error|skipped" "$OUT/tests.log" | tail -1 | $PY -c "import json,sys; print(json.dumps({'stage': 'tests-summary', 'line': sys.stdin.read().strip()}))" >> "$RESULTS"
stage bench-weights "${BENCH_TIMEOUT:-900}" $PY -m rlscope.cli bench weights --device $DEV $WARGS --json
stage bench-lora "${BENCH_TIMEOUT:-900}" $PY -m rlscope.cli bench lora --device $DEV $LARGS --json
stage bench-passk "${BENCH_TIMEOUT:-900}" $PY -m rlscope.cli bench passk --device $DEV --shape "$SHAPE" $PARGS --json
OV="--device $DEV --model $SHAPE --steps $OSTEPS --repeats $OREP --json"
stage bench-overhead "${BENCH_TIMEOUT:-900}" $PY -m rlscope.cli bench overhead $OV
stage bench-overhead-heavy "${BENCH_TIMEOUT:-900}" $PY -m rlscope.cli bench overhead $OV --probes heavy
echo "results: $RESULTS"
cat "$RESULTS"
