#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv with everything npdraw needs.
# Order matters: torch/torchvision come from this machine's wheel cache at pinned versions, and
# scikit-learn-extra is built from source against NumPy 2 (its wheel targets NumPy 1; Ray needs NumPy 2).
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
STAMP="$VENV/.npdraw-installed"
HASH=$(cat pyproject.toml scripts/setup_venv.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip "setuptools>=70" wheel
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q "numpy>=2" "cython>=0.29,<3.1" "scipy" "scikit-learn"
if ! $VENV/bin/python -c "import sklearn_extra.cluster" 2>/dev/null; then
  $PIP install -q --no-build-isolation --no-binary scikit-learn-extra --no-cache-dir "scikit-learn-extra==0.3.0"
fi
$PIP install -q -e ".[dev]"
echo "$HASH" > "$STAMP"
