#!/usr/bin/env bash
# Dependency policy (deny.toml), the "deny" step of deploy/test.sh:
#   cargo deny check bans licenses sources   always (offline: crates.io metadata only);
#                                            duplicate versions are listed as warnings
#   cargo deny check advisories              when the RustSec database can be fetched
#                                            (it lives on GitHub; where GitHub is not
#                                            reachable the step says so and skips it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! out="$(cargo deny check bans licenses sources 2>&1)"; then
    echo "$out"
    exit 1
fi
echo "$out" | grep -E "^(warning|error)\[|^bans " || true
if timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1; then
    cargo deny --log-level error check advisories
else
    echo "deny: advisories skipped: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from here"
fi
