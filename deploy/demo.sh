#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, start NATS and the
# MongoDB-wire server, build and start the five services, then run the example
# runtime and an example graph (a fan-out of DEMO_WIDTH branches and a unite),
# printing progress and the final run status. Everything is stopped on exit.
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
cargo build "${CARGO_PROFILE[@]}" --workspace --bins
cargo build "${CARGO_PROFILE[@]}" -p exo-runtime --example demo

cleanup() {
    banner "stop"
    deploy/services.sh down || true
    deploy/servers.sh down || true
}
trap cleanup EXIT

banner "servers"
deploy/servers.sh up
# shellcheck source=/dev/null
source .run/env.sh

banner "services"
deploy/services.sh up

banner "example runtime + example graph (fan-out of $WIDTH, unite)"
"${CARGO_TARGET_DIR:-target}/$PROFILE/examples/demo" --width "$WIDTH"
