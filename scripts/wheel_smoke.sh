#!/bin/bash
# CI: build the wheel, install it into a fresh venv outside the source tree, and run rlscope from there: the
# recipes ship inside the package (rlscope recipes; --config by name), a 2-step train, the demo's help; the LoRA
# recipe refused with one line without peft, then run with the [lora] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/rlscope-wheel.XXXX)
$PY -m pip wheel --quiet --no-deps -w "$WORK/dist" . >/dev/null
WHEEL=$(ls "$WORK"/dist/rlscope-*.whl)
echo "wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
$PY -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --upgrade pip
"$WORK/venv/bin/pip" install --quiet torch==2.13.0
"$WORK/venv/bin/pip" install --quiet "$WHEEL"
cd "$WORK"  # no source tree here: everything comes from the installed wheel
export WANDB_MODE=disabled HF_HUB_OFFLINE=1
"$WORK/venv/bin/rlscope" recipes --json | "$WORK/venv/bin/python" -c "import json, sys; r = json.loads(sys.stdin.read()); assert r['recipes'] and r['accelerate_configs'], r; print('rlscope recipes:', len(r['recipes']), 'recipes,', len(r['accelerate_configs']), 'accelerate configs in', r['recipes_dir'])"
"$WORK/venv/bin/rlscope" train --config tiny_dapo --max_steps 2 --runs_dir "$WORK/runs" --run_name smoke \
  --save_strategy no --report_to none --console none --analyze false
test -s "$WORK/runs/smoke/metrics.jsonl"
set +e
"$WORK/venv/bin/rlscope" train --config tiny_dapo_lora --max_steps 2 --runs_dir "$WORK/runs" --run_name nopeft \
  > "$WORK/nopeft.log" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "pip install 'rlscope\[lora\]'" "$WORK/nopeft.log" || { cat "$WORK/nopeft.log"; exit 1; }
echo "without peft: $(grep "rlscope\\[lora\\]" "$WORK/nopeft.log")"
"$WORK/venv/bin/pip" install --quiet "$WHEEL[lora]"
"$WORK/venv/bin/rlscope" train --config tiny_dapo_lora --max_steps 2 --runs_dir "$WORK/runs" --run_name lora \
  --probe_every '{"weights": 2, "passk": "off"}' --save_strategy no --report_to none --console none --analyze false \
  --eval_heldout false
grep -q '"rlscope/weights/n_adapted", "value": 12.0' "$WORK/runs/lora/metrics.jsonl"
"$WORK/venv/bin/rlscope" demo --help >/dev/null
"$WORK/venv/bin/python" -c "import rlscope, pathlib; p = pathlib.Path(rlscope.__file__).parent; assert 'site-packages' in str(p), p; print('imported from', p)"
echo "wheel smoke test: ok"
rm -rf "$WORK"
