#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest.
# Run as root (with apt-get), it also installs espeak-ng (the speech-synthesis and phonemiser tests)
# and Debian's chromium (the browser test of asr serve's page); without them those tests are
# skipped, except under CI (CI=true), where a missing chromium fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_espeak.sh || echo "[test] espeak-ng unavailable: the tests that need it will be skipped"
if [ -n "${ASR_CHROMIUM:-}" ] && [ -x "$ASR_CHROMIUM" ]; then
  :  # tests/test_browser.py drives this browser instead of /usr/bin/chromium
elif ! bash scripts/ensure_chromium.sh; then
  case "${CI:-}" in
    "" | 0 | false | False | FALSE)
      echo "[test] chromium unavailable: the browser tests of asr serve's page will be skipped" ;;
    *)
      echo "[test] error: CI=$CI and no chromium: CI must run the browser tests of asr serve's page" >&2
      exit 1 ;;
  esac
fi
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
