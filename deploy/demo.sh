#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, start NATS and the
# MongoDB-wire server, build and start the five services (`exo dev`), then run the
# example runtime and an example graph (a fan-out of DEMO_WIDTH branches and a unite),
# printing progress and the final run status, then the run as `exo run show` draws it.
# Everything is stopped on exit.
# EXO_PROFILE=release builds and runs optimized binaries (a longer first build,
# several times faster runs: use it for wide fan-outs and for measuring).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WIDTH="${DEMO_WIDTH:-100}"
PROFILE="${EXO_PROFILE:-debug}"
case "$PROFILE" in
    debug) CARGO_PROFILE=() ;;
    release) CARGO_PROFILE=(--release) ;;
    *) echo "EXO_PROFILE must be debug or release, not '$PROFILE'" >&2; exit 64 ;;
esac
export EXO_PROFILE="$PROFILE"

banner() { printf '\n=== %s ===\n' "$*"; }

banner "install (idempotent)"
bash deploy/install.sh
# shellcheck source=/dev/null
source .tools/env.sh

banner "build ($PROFILE)"
cargo build "${CARGO_PROFILE[@]}" --workspace --bins --examples
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"

# `exo dev` starts the servers and the five services (the CLI's one-command local
# system); the demo below brings its own runtime.
DEV=("$BIN/exo" dev --no-build --no-runtime)
[ "$PROFILE" = release ] && DEV+=(--release)
cleanup() {
    banner "stop"
    "${DEV[@]}" --down || true
}
trap cleanup EXIT

banner "servers and services (exo dev)"
"${DEV[@]}" --detach
# shellcheck source=/dev/null
source .run/env.sh

banner "example runtime + example graph (fan-out of $WIDTH, unite)"
"$BIN/examples/demo" --width "$WIDTH"

banner "the run, as the exo CLI shows it"
export EXO_URL="http://${EXO_API__ADDR:-127.0.0.1:8000}" EXO_API_KEY="${EXO_API__KEY:-exo-demo-key}" EXO_NAMESPACE=demo
"$BIN/exo" run list --size 1
"$BIN/exo" run show "$("$BIN/exo" -o json run list --size 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["run_id"])')"
