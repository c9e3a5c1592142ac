#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the browser test (tests/test_browser.py):
# install it with apt-get when we are root, else explain how. Never `playwright install`: it
# downloads its own browser, which this project does not rely on.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] installing chromium with apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  exit 0
fi
echo "error: /usr/bin/chromium is missing; the browser test of asr serve's page needs it." >&2
echo "  Debian/Ubuntu: sudo apt-get install chromium" >&2
exit 1
