#!/usr/bin/env bash
# Make sure espeak-ng is installed: install it with apt-get when we are root, else explain how.
set -euo pipefail
if command -v espeak-ng >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[espeak] installing espeak-ng with apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) >/dev/null
  exit 0
fi
echo "error: espeak-ng is not installed; the demo synthesises its corpus with it, and model.phone_ctc_weight > 0 phonemises transcripts with it." >&2
echo "  Debian/Ubuntu: sudo apt-get install espeak-ng    Fedora: sudo dnf install espeak-ng    macOS: brew install espeak-ng" >&2
exit 1
