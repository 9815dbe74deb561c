#!/usr/bin/env bash
# The Python SDK path (docs/benchmarks.md, "The Python SDK path"): the official,
# unmodified SDK drives release builds of the five services on fresh local servers.
#
#   deploy/bench-sdk.sh                      P = 0.05 s and P = 1 s, 3 chain runs each
#   deploy/bench-sdk.sh --poll 0.05 --runs 5 arguments go to tests/bench/sdk_bench.py
#
# Uses ports 4222/8222/27017 and 8000 (deploy/servers.sh, deploy/services.sh) and
# stops everything it started on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash deploy/install.sh
bash deploy/install-python-sdk.sh
cargo build --release --workspace --bins

cleanup() {
    deploy/services.sh down >/dev/null 2>&1 || true
    deploy/servers.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
deploy/servers.sh down >/dev/null 2>&1 || true
deploy/servers.sh up
# shellcheck source=/dev/null
source .run/env.sh
export EXO_API__KEY=bench-key EXO_MONGO__DATABASE=sdk-bench RUST_LOG=warn
EXO_PROFILE=release deploy/services.sh up

export EXOSPHERE_STATE_MANAGER_URI="http://${EXO_API__ADDR:-127.0.0.1:8000}" EXOSPHERE_API_KEY=bench-key
if [ $# -gt 0 ]; then
    .tools/pysdk/bin/python tests/bench/sdk_bench.py "$@"
else
    for p in 0.05 1; do
        echo "== poll_interval $p s"
        .tools/pysdk/bin/python tests/bench/sdk_bench.py --poll "$p" --runs 3
    done
fi
