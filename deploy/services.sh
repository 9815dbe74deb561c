#!/usr/bin/env bash
# Start or stop the five control-plane services locally (debug builds; EXO_PROFILE=release
# for release builds).
#
#   deploy/services.sh up     start exo-trigger, exo-scheduler, exo-completion, exo-retry, exo-api
#   deploy/services.sh down   stop them (SIGTERM, then SIGKILL after 10 s)
#
# Reads NATS/MongoDB URLs from the environment (source .run/env.sh after deploy/servers.sh up).
# The API listens on EXO_API__ADDR (default 127.0.0.1:8000); admin ports are 9101-9105.
# Logs and pid files go to .run/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/${EXO_PROFILE:-debug}"
SERVICES=(exo-trigger exo-scheduler exo-completion exo-retry exo-api)
mkdir -p "$RUN"

export EXO_API__ADDR="${EXO_API__ADDR:-127.0.0.1:8000}"
export EXO_API__KEY="${EXO_API__KEY:-${STATE_MANAGER_SECRET:-exo-demo-key}}"
export EXO_API__SECRETS_ENCRYPTION_KEY="${EXO_API__SECRETS_ENCRYPTION_KEY:-${SECRETS_ENCRYPTION_KEY:-YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=}}"
export EXO_MONGO__DATABASE="${EXO_MONGO__DATABASE:-exosphere-demo}"
# Transactions abandoned by a killed service hold their locks until this limit.
export EXO_MONGO__TRANSACTION_LIFETIME_SECS="${EXO_MONGO__TRANSACTION_LIFETIME_SECS:-2}"

up() {
    local port=9101
    for s in "${SERVICES[@]}"; do
        [ -x "$BIN/$s" ] || { echo "missing $BIN/$s: run cargo build --workspace --bins" >&2; exit 1; }
        EXO_ADMIN__ADDR="127.0.0.1:$port" "$BIN/$s" >"$RUN/$s.log" 2>&1 &
        echo $! >"$RUN/$s.pid"
        echo "[services] $s pid $! admin 127.0.0.1:$port log .run/$s.log"
        port=$((port + 1))
    done
    port=9101
    for s in "${SERVICES[@]}"; do
        local ok=0
        for _ in $(seq 1 150); do
            if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ok=1; break; fi
            if ! kill -0 "$(cat "$RUN/$s.pid")" 2>/dev/null; then break; fi
            sleep 0.2
        done
        if [ "$ok" != 1 ]; then
            echo "[services] $s did not become ready; last log lines:" >&2
            tail -20 "$RUN/$s.log" >&2
            exit 1
        fi
        port=$((port + 1))
    done
    echo "[services] all ready; API on http://$EXO_API__ADDR (key in EXO_API__KEY)"
}

down() {
    for s in "${SERVICES[@]}"; do
        local f="$RUN/$s.pid"
        [ -f "$f" ] || continue
        local pid; pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    echo "[services] stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
