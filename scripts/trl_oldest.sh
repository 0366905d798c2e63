#!/bin/bash
# CI: the oldest supported TRL (rlscope.taps.SUPPORTED_TRL[0]'s minor, newest patch) in a second venv, and the subset
# that touches TRL's internals: the taps and attach, the token probes, the DAPO trainer's units and dynamic sampling,
# short tiny recipes end to end, the LoRA recipe end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TRL=${TRL_OLDEST:-1.14.2}
VENV=$(mktemp -d /tmp/rlscope-trl.XXXX)/venv
$PY -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet -e ".[dev]" "trl==$TRL"
"$VENV/bin/python" -c "import trl; assert trl.__version__ == '$TRL', trl.__version__; print('TRL', trl.__version__)"
"$VENV/bin/python" -m pytest -q tests/test_observatory.py tests/test_probes.py tests/test_dapo_units.py \
  tests/test_dynamic_sampling.py tests/test_train_e2e.py "tests/test_lora.py::test_lora_recipe_end_to_end"
rm -rf "$(dirname "$VENV")"
