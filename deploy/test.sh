#!/usr/bin/env bash
# The one test command for a fresh machine (CI runs it through .ci/run):
#   1. deploy/install.sh      nats-server, secantusd-rs, just, cargo-nextest
#   2. cargo build --workspace --bins      (the e2e tests spawn these binaries)
#   3. cargo nextest run --workspace --profile ci
#      (tests start their own servers through exo-test-support, using the binaries from step 1)
#   4. cargo fmt --all -- --check
#   5. cargo clippy --workspace --all-targets -- -D warnings
#   6. cargo machete                        (no unused dependencies)
#      deploy/deny.sh                       (cargo deny: licences, bans, sources; advisories
#                                            where the RustSec database can be fetched)
#      deploy/check-k8s.sh                  (kustomize overlays rendered and validated offline
#                                            with kubernetes-validate --strict; deploy/compose.yaml
#                                            against the Compose Specification schema)
#   7. deploy/check-size.py                 (no function over 80 lines, no file over 800)
#   8. cargo doc --no-deps, warnings denied  (no broken doc links)
# Steps 2-5 all run even when one fails; the exit code is non-zero if any failed.
#
# Existing MongoDB: EXO_TEST_MONGO_URI (or EXO_MONGO_URI / MONGO_URI) makes the tests use it
# instead of spawning secantusd-rs; with only `mongod` on PATH, one is started via
# `EXO_USE_MONGOD=1 deploy/servers.sh up mongo` for the duration of the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

banner() { printf '\n=== %s ===\n' "$*"; }

banner "install"
# Every test starts its own nats-server (kill -9 / restart tests), so install it even when
# NATS_URL points at an existing server.
env -u NATS_URL bash deploy/install.sh
# shellcheck source=/dev/null
source .tools/env.sh

STARTED_MONGOD=0
cleanup() {
    if [ "$STARTED_MONGOD" = 1 ]; then deploy/servers.sh down || true; fi
}
trap cleanup EXIT

if [ -z "${EXO_TEST_MONGO_URI:-}" ]; then
    if [ -n "${EXO_MONGO_URI:-${MONGO_URI:-}}" ]; then
        export EXO_TEST_MONGO_URI="${EXO_MONGO_URI:-$MONGO_URI}"
    elif [ -z "${EXO_SECANTUSD_BIN:-}" ] && command -v mongod >/dev/null 2>&1; then
        banner "mongod"
        EXO_USE_MONGOD=1 deploy/servers.sh up mongo
        STARTED_MONGOD=1
        EXO_TEST_MONGO_URI="$(cat .run/mongo.uri)"
        export EXO_TEST_MONGO_URI
    fi
fi
if [ -n "${EXO_TEST_MONGO_URI:-}" ]; then echo "tests use the MongoDB server from EXO_TEST_MONGO_URI"; fi

FAILED=()
step() {
    local name="$1"
    shift
    banner "$name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "--- $name ok ($((SECONDS - start)) s)"
    else
        echo "--- $name FAILED ($((SECONDS - start)) s)"
        FAILED+=("$name")
    fi
}

step build cargo build --workspace --bins --examples
if [[ " ${FAILED[*]} " == *" build "* ]]; then
    echo "--- test skipped: the build failed"
    FAILED+=("test")
else
    step test cargo nextest run --workspace --profile ci
fi
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step machete cargo machete
step deny bash deploy/deny.sh
step k8s bash deploy/check-k8s.sh
step size python3 deploy/check-size.py
step doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

banner "summary"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed (build, test, fmt, clippy, machete, deny, k8s, size, doc)"
