#!/usr/bin/env bash
# Install Debian's chromium for tests/test_browser.py, if it is missing. Idempotent; never fails the CI run.
#
# Where chromium cannot be installed (not root and no passwordless sudo, no apt-get, no package
# mirror), this prints why, writes the reason to tests/artifacts/browser-unavailable.txt and exits 0:
# the browser test then skips with that reason. Playwright's Python package comes from the test
# extras (pip); its own browser download (`playwright install`) is never used.
set -uo pipefail
cd "$(dirname "$0")/.."
REASON_FILE=tests/artifacts/browser-unavailable.txt
mkdir -p tests/artifacts

unavailable() {
  echo "[install_browser] chromium unavailable: $*" >&2
  echo "$*" > "$REASON_FILE"
  exit 0
}

find_chromium() {
  for c in "${CLIPKIT_CHROMIUM:-}" chromium chromium-browser /usr/bin/chromium; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
  done
  return 1
}

if path=$(find_chromium); then
  rm -f "$REASON_FILE"
  echo "[install_browser] chromium present: $path ($("$path" --version 2>/dev/null | head -n1))"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 ||
  unavailable "no apt-get on this machine (not Debian/Ubuntu): install chromium and set CLIPKIT_CHROMIUM"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  unavailable "not root and no passwordless sudo, so apt-get cannot install chromium"
fi

export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp)
echo "[install_browser] apt-get update && apt-get install chromium (a few minutes the first time)"
# timeout: a dead mirror must not hang CI
if ! timeout 600 $SUDO apt-get update -qq >"$LOG" 2>&1; then
  unavailable "apt-get update failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
if ! timeout 900 $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >"$LOG" 2>&1; then
  unavailable "apt-get install chromium failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
rm -f "$LOG"

path=$(find_chromium) || unavailable "apt-get installed chromium but no chromium executable is on PATH"
rm -f "$REASON_FILE"
echo "[install_browser] installed $path ($("$path" --version 2>/dev/null | head -n1))"
