#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with the operator, the trainer
# (TensorFlow CPU) and the test tools. Re-running is cheap: a stamp file skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.disttrain-stamp"
want=$(cat operator/pyproject.toml trainer/pyproject.toml requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ./operator -e "./trainer[cpu]" -r requirements-dev.txt
echo "$want" > "$stamp"
echo "venv ready in $(( $(date +%s) - start ))s: $VENV"
