#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, start NATS and the
# MongoDB-wire server, build and start the five services, then run the example
# runtime and an example graph (a fan-out of DEMO_WIDTH branches and a unite),
# printing progress and the final run status. Everything is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WIDTH="${DEMO_WIDTH:-100}"

banner() { printf '\n=== %s ===\n' "$*"; }

banner "install (idempotent)"
bash deploy/install.sh
# shellcheck source=/dev/null
source .tools/env.sh

banner "build"
cargo build --workspace --bins
cargo build -p exo-runtime --example demo

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
"${CARGO_TARGET_DIR:-target}/debug/examples/demo" --width "$WIDTH"
