#!/usr/bin/env bash
# Benchmarks (`just bench`): speed, width and cost on real local servers.
#
#   1. deploy/install.sh                              nats-server, secantusd-rs (idempotent)
#   2. cargo build --release --workspace --bins       the five services (and exo-bench)
#   3. target/release/exo-bench "$@"                  starts its own servers and services
#
# Arguments go to exo-bench; without any, every workload runs with the defaults
# (chain, dispatch, fan-out 1k and 10k, trigger, http) and the JSON summary is
# written to target/bench/summary.json. Examples:
#
#   deploy/bench.sh --workload chain,dispatch --runs 10
#   deploy/bench.sh --workload fanout --fanout 100000
#   deploy/bench.sh --sync-on-commit --nats-sync-always      # durable settings
#   deploy/bench.sh --workload chain --mongo-proxy           # count MongoDB round trips
#
# Results and how to read them: docs/benchmarks.md. Other CPU-heavy work on the
# machine (a test run, a build) skews every figure: run it on a quiet machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

banner() { printf '\n=== %s ===\n' "$*"; }

banner "install (idempotent)"
bash deploy/install.sh
# shellcheck source=/dev/null
source .tools/env.sh

banner "build (release)"
cargo build --release --workspace --bins

TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
    ARGS=(--json "$TARGET/bench/summary.json")
fi

banner "exo-bench ${ARGS[*]}"
exec "$TARGET/release/exo-bench" --bin-dir "$TARGET/release" "${ARGS[@]}"
