#!/usr/bin/env bash
# Local NATS JetStream + MongoDB-wire servers for development.
#
#   deploy/servers.sh up       start nats-server and secantusd-rs on 127.0.0.1 with fresh data dirs
#   deploy/servers.sh up nats|mongo   start only one of them
#   deploy/servers.sh down     stop them (SIGTERM, SIGKILL after 5 s)
#   deploy/servers.sh status   show what runs and whether it answers
#
# Ports: EXO_NATS_PORT (4222), EXO_NATS_MON_PORT (8222), EXO_MONGO_PORT (27017).
# Existing servers: NATS_URL / EXO_MONGO_URI / MONGO_URI are used as given, nothing is started.
# EXO_USE_MONGOD=1 with mongod on PATH starts `mongod --replSet rs0` instead of secantusd-rs.
# State lives in .run/ (pid files, *.log, data dirs, env.sh with the URLs to export).
# Binaries come from deploy/install.sh (.tools/nats, ~/.cargo/bin/secantusd-rs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"
NATS_PORT="${EXO_NATS_PORT:-4222}"
NATS_MON_PORT="${EXO_NATS_MON_PORT:-8222}"
MONGO_PORT="${EXO_MONGO_PORT:-27017}"
STOP_GRACE_SECS=5

log() { printf '[servers] %s\n' "$*"; }
die() { printf '[servers] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 up [nats|mongo] | down | status" >&2
    exit 2
}

# ------------------------------------------------------------------ helpers

# pid from .run/<name>.pid if that process is alive, else nothing.
live_pid() {
    local f="$RUN/$1.pid" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

nats_ready() { curl -sf "http://127.0.0.1:$NATS_MON_PORT/healthz?js-enabled-only=true" >/dev/null 2>&1; }

mongo_ready() { grep -q 'listening on' "$RUN/mongo.log" 2>/dev/null && tcp_open "$MONGO_PORT"; }

mongod_ready() { tcp_open "$MONGO_PORT"; }

# version_ge "2.15.1" "2.10" -> true
version_ge() {
    local IFS=.
    # shellcheck disable=SC2206
    local a=($1) b=($2) i
    for i in 0 1 2; do
        local x="${a[i]:-0}" y="${b[i]:-0}"
        if [ "$x" -gt "$y" ]; then return 0; fi
        if [ "$x" -lt "$y" ]; then return 1; fi
    done
    return 0
}

find_nats_bin() {
    if [ -n "${EXO_NATS_SERVER_BIN:-}" ]; then echo "$EXO_NATS_SERVER_BIN"; return; fi
    if [ -x "$ROOT/.tools/nats/bin/nats-server" ]; then echo "$ROOT/.tools/nats/bin/nats-server"; return; fi
    local p v
    if p="$(command -v nats-server)"; then
        v="$("$p" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
        if [ -n "$v" ] && version_ge "$v" 2.10; then echo "$p"; return; fi
        die "$p is nats-server $v; 2.10+ is needed (Debian's 2.9 lacks JetStream features). Run deploy/install.sh."
    fi
    die "nats-server not found. Run deploy/install.sh."
}

find_secantus_bin() {
    if [ -n "${EXO_SECANTUSD_BIN:-}" ]; then echo "$EXO_SECANTUSD_BIN"; return; fi
    local c="${CARGO_HOME:-$HOME/.cargo}/bin/secantusd-rs"
    if [ -x "$c" ]; then echo "$c"; return; fi
    if command -v secantusd-rs >/dev/null 2>&1; then command -v secantusd-rs; return; fi
    die "secantusd-rs not found. Run deploy/install.sh."
}

# wait_until <seconds> <what> <pid> <check-fn> [args...]
wait_until() {
    local secs="$1" what="$2" pid="$3"
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited during startup; last log lines:"
            tail -n 30 "$RUN/$what.log" >&2 || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what not ready after ${secs}s; last log lines:"
            tail -n 30 "$RUN/$what.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

# Start "$@" detached (own session, so it outlives this shell), log to .run/<name>.log.
spawn() {
    local name="$1"
    shift
    log "starting $name: $*"
    setsid "$@" </dev/null >"$RUN/$name.log" 2>&1 &
    echo "$!" >"$RUN/$name.pid"
}

stop() {
    local name="$1" pid
    if ! pid="$(live_pid "$name")"; then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid): SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_GRACE_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name still alive after ${STOP_GRACE_SECS}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$RUN/$name.pid"
}

# Remove data dirs of earlier runs (not of a server that still runs).
prune_old_data() {
    local kind="$1" keep="${2:-}" d
    for d in "$RUN/$kind"-*; do
        [ -d "$d" ] || continue
        [ "$d" = "$keep" ] && continue
        rm -rf "$d"
    done
}

# ------------------------------------------------------------------ commands

NATS_URL_OUT=""
MONGO_URI_OUT=""

# URLs exported from our own .run/env.sh are not "external" servers.
ours() { [ -f "$RUN/$1" ] && [ "$(cat "$RUN/$1")" = "$2" ]; }
external_nats() { [ -n "${NATS_URL:-}" ] && ! ours nats.url "$NATS_URL"; }
external_mongo() {
    local u="${EXO_MONGO_URI:-${MONGO_URI:-}}"
    [ -n "$u" ] && ! ours mongo.uri "$u"
}

up_nats() {
    if external_nats; then
        log "NATS_URL is set: using $NATS_URL, not starting nats-server"
        NATS_URL_OUT="$NATS_URL"
        return
    fi
    NATS_URL_OUT="nats://127.0.0.1:$NATS_PORT"
    local pid
    if pid="$(live_pid nats)"; then
        log "nats-server already running (pid $pid)"
        return
    fi
    if tcp_open "$NATS_PORT"; then die "port $NATS_PORT is taken by another process (set EXO_NATS_PORT)"; fi
    if tcp_open "$NATS_MON_PORT"; then die "port $NATS_MON_PORT is taken by another process (set EXO_NATS_MON_PORT)"; fi
    local bin data
    bin="$(find_nats_bin)"
    data="$RUN/nats-$(date +%Y%m%d-%H%M%S)-$$"
    prune_old_data nats
    mkdir -p "$data"
    echo "$data" >"$RUN/nats.dir"
    # A wide fan-out reports all its outputs in one result message: allow
    # payloads up to 64 MiB (the default is 1 MiB).
    printf 'max_payload: 64MB\n' >"$data.conf"
    spawn nats "$bin" -c "$data.conf" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" -js -sd "$data"
    wait_until 20 nats "$(cat "$RUN/nats.pid")" nats_ready || { stop nats; die "nats-server did not become ready"; }
    echo "$NATS_URL_OUT" >"$RUN/nats.url"
    log "nats-server ready on $NATS_URL_OUT (monitor http://127.0.0.1:$NATS_MON_PORT, data $data)"
}

up_mongo() {
    if external_mongo; then
        MONGO_URI_OUT="${EXO_MONGO_URI:-$MONGO_URI}"
        log "EXO_MONGO_URI/MONGO_URI is set: using it, not starting a MongoDB server"
        return
    fi
    local pid
    if pid="$(live_pid mongo)"; then
        MONGO_URI_OUT="$(cat "$RUN/mongo.uri" 2>/dev/null || echo "mongodb://127.0.0.1:$MONGO_PORT")"
        log "mongo server already running (pid $pid)"
        return
    fi
    if tcp_open "$MONGO_PORT"; then die "port $MONGO_PORT is taken by another process (set EXO_MONGO_PORT)"; fi
    local data
    if [ "${EXO_USE_MONGOD:-0}" = "1" ] && command -v mongod >/dev/null 2>&1; then
        data="$RUN/mongod-$(date +%Y%m%d-%H%M%S)-$$"
        prune_old_data mongod
        mkdir -p "$data"
        spawn mongo mongod --replSet rs0 --bind_ip 127.0.0.1 --port "$MONGO_PORT" --dbpath "$data"
        wait_until 60 mongo "$(cat "$RUN/mongo.pid")" mongod_ready || { stop mongo; die "mongod did not become ready"; }
        local shell
        if command -v mongosh >/dev/null 2>&1; then shell=mongosh
        elif command -v mongo >/dev/null 2>&1; then shell=mongo
        else die "mongod started but neither mongosh nor mongo is on PATH to run rs.initiate"; fi
        log "rs.initiate() via $shell"
        "$shell" --quiet --port "$MONGO_PORT" --eval \
            "rs.initiate({_id: 'rs0', members: [{_id: 0, host: '127.0.0.1:$MONGO_PORT'}]})" >/dev/null
        local deadline=$((SECONDS + 30))
        until "$shell" --quiet --port "$MONGO_PORT" --eval 'db.hello().isWritablePrimary' 2>/dev/null | grep -q true; do
            [ "$SECONDS" -lt "$deadline" ] || die "replica set rs0 did not elect a primary in 30 s"
            sleep 0.5
        done
        MONGO_URI_OUT="mongodb://127.0.0.1:$MONGO_PORT/?replicaSet=rs0"
    else
        local bin
        bin="$(find_secantus_bin)"
        data="$RUN/mongo-$(date +%Y%m%d-%H%M%S)-$$"
        prune_old_data mongo
        # secantusd-rs auto-discovers ./secantusd.toml and ~/.secantus/; pin an empty config.
        : >"$RUN/secantusd.toml"
        spawn mongo "$bin" --config "$RUN/secantusd.toml" --host 127.0.0.1 --port "$MONGO_PORT" \
            --storage-path "$data" --cache-size 1G --log-file-max 16MB
        wait_until 30 mongo "$(cat "$RUN/mongo.pid")" mongo_ready || { stop mongo; die "secantusd-rs did not become ready"; }
        MONGO_URI_OUT="mongodb://127.0.0.1:$MONGO_PORT"
    fi
    echo "$data" >"$RUN/mongo.dir"
    echo "$MONGO_URI_OUT" >"$RUN/mongo.uri"
    log "mongo server ready on $MONGO_URI_OUT (data $data)"
}

print_env() {
    local lines=()
    if [ -n "$NATS_URL_OUT" ]; then lines+=("NATS_URL=$NATS_URL_OUT" "EXO_NATS__URL=$NATS_URL_OUT"); fi
    if [ -n "$MONGO_URI_OUT" ]; then lines+=("EXO_MONGO_URI=$MONGO_URI_OUT" "EXO_MONGO__URI=$MONGO_URI_OUT"); fi
    {
        echo "# Written by deploy/servers.sh up; source it."
        local l
        for l in "${lines[@]}"; do printf 'export %s=%q\n' "${l%%=*}" "${l#*=}"; done
    } >"$RUN/env.sh"
    echo
    echo "# export these (or: source .run/env.sh)"
    printf '%s\n' "${lines[@]}"
}

cmd_up() {
    mkdir -p "$RUN"
    case "${1:-all}" in
        all) up_nats; up_mongo ;;
        nats) up_nats ;;
        mongo) up_mongo ;;
        *) usage ;;
    esac
    print_env
}

cmd_down() {
    mkdir -p "$RUN"
    stop nats
    stop mongo
    rm -f "$RUN/env.sh"
    log "stopped (data dirs stay in .run/ until the next 'up')"
}

cmd_status() {
    local rc=0 pid
    if external_nats; then
        log "nats:  external $NATS_URL"
    elif pid="$(live_pid nats)"; then
        if nats_ready; then log "nats:  running, pid $pid, nats://127.0.0.1:$NATS_PORT, healthz ok"
        else log "nats:  running, pid $pid, healthz NOT ok"; rc=1; fi
    else
        log "nats:  not running"; rc=1
    fi
    if external_mongo; then
        log "mongo: external ${EXO_MONGO_URI:-$MONGO_URI}"
    elif pid="$(live_pid mongo)"; then
        if tcp_open "$MONGO_PORT"; then log "mongo: running, pid $pid, $(cat "$RUN/mongo.uri" 2>/dev/null), accepting connections"
        else log "mongo: running, pid $pid, NOT accepting connections"; rc=1; fi
    else
        log "mongo: not running"; rc=1
    fi
    return "$rc"
}

[ $# -ge 1 ] || usage
case "$1" in
    up) [ $# -le 2 ] || usage; cmd_up "${2:-all}" ;;
    down) [ $# -eq 1 ] || usage; cmd_down ;;
    status) [ $# -eq 1 ] || usage; cmd_status ;;
    *) usage ;;
esac
