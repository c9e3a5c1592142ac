#!/usr/bin/env bash
# Create .venv and install this checkout (the distribution lstm-asr, imported and run as asr) with its test
# extras. Idempotent: re-running only checks.
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
echo "[setup] installing $torch_spec and lstm-asr[dev] (this checkout, editable) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned resolve could pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check "$torch_spec"
# Until issue 31 the distribution was called asr (on PyPI that name is an unrelated package): uninstall
# such an editable install of this checkout, which would stay beside lstm-asr.
if .venv/bin/python -c "
import importlib.metadata as m, json, os, sys, urllib.parse, urllib.request
def source(dist):  # the folder an install from a local folder came from, else None
    info = dist.read_text('direct_url.json')
    return info and os.path.realpath(urllib.request.url2pathname(urllib.parse.urlparse(json.loads(info)['url']).path))
sys.exit(not any(source(dist) == os.path.realpath('.') for dist in m.distributions(name='asr')))" 2>/dev/null; then
  .venv/bin/python -m pip uninstall -q -y --disable-pip-version-check asr
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import asr, torch; print(f'[setup] asr {asr.__version__}, torch {torch.__version__}')"
echo "$want" > "$stamp"
