#!/usr/bin/env bash
# Installs what the live-view browser test needs: Debian's `chromium` (apt) and
# Playwright for Python (pinned) in the project-local venv `.tools/browser`, which drives
# that Chromium (no browser download: Playwright is given /usr/bin/chromium).
# Idempotent and serialised (parallel tests may all call it). Prints the venv's python.
#
# Usage: deploy/install-browser.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/browser"
PLAYWRIGHT_VERSION="1.65.2"

log() { printf '[install-browser] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$ROOT/.tools"
exec 9>"$ROOT/.tools/browser.lock"
flock 9

if ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium with apt-get"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi
if ! "$VENV/bin/python" -c 'import playwright' 2>/dev/null; then
    log "creating $VENV with playwright==$PLAYWRIGHT_VERSION"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION" >&2
fi
log "chromium: $(chromium --version 2>/dev/null || echo missing)"
echo "$VENV/bin/python"
