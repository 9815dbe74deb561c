# Developer and CI habits. Recipes stay thin: the logic lives in deploy/*.sh.
# First time on a machine: `deploy/install.sh` (it installs `just` itself into .tools/just).

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install nats-server, secantusd-rs, just, cargo-nextest and cargo-machete (idempotent).
setup:
    deploy/install.sh

# Start local nats-server + secantusd-rs on 127.0.0.1 (fresh data dirs in .run/).
up:
    deploy/servers.sh up

# Stop the local servers.
down:
    deploy/servers.sh down

# Show whether the local servers run and answer.
status:
    deploy/servers.sh status

# Build every service binary (the e2e tests spawn them).
build:
    cargo build --workspace --bins

# Format the workspace.
fmt:
    cargo fmt --all

# Format check, clippy with warnings denied, no unused dependencies, size limits.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo machete
    deploy/deny.sh
    python3 deploy/check-size.py

# Install tools, build the binaries, run all tests (extra args go to nextest).
test *ARGS: setup build
    source .tools/env.sh && cargo nextest run --workspace {{ARGS}}

# What CI runs: install, build, test (ci profile), fmt check, clippy.
ci:
    deploy/test.sh

# Run the end-to-end demo.
demo:
    deploy/demo.sh

# Run the benchmarks (deploy/bench.sh) if they exist yet.
bench:
    @if [ -x deploy/bench.sh ]; then deploy/bench.sh; else echo "deploy/bench.sh does not exist yet: no benchmarks to run"; fi

# Build the docs with warnings denied.
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Render and validate the Kubernetes manifests offline.
k8s:
    deploy/check-k8s.sh
