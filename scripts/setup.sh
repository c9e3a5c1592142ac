#!/usr/bin/env bash
# Create .venv and install asr with its test extras. Idempotent: re-running only checks.
#   PYTHON=python3.12 bash scripts/setup.sh      # choose the interpreter
#   TORCH_SPEC="torch==2.13.0" (default)         # the CPU build on our machines; any torch>=2.4 works
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.asr-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $torch_spec"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing $torch_spec and asr[dev] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned resolve could pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check "$torch_spec"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import asr, torch; print(f'[setup] asr {asr.__version__}, torch {torch.__version__}')"
echo "$want" > "$stamp"
