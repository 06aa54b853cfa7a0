#!/usr/bin/env bash
# THE test command (see the README): formatting, lints, then the whole test
# suite against a real PostgreSQL and RabbitMQ, which scripts/services.sh
# brings up first. CI runs exactly this through .ci/run, so a green run here
# means a green CI.
#
# Extra arguments go to the test runner, e.g.
#   scripts/test.sh -E 'test(booking)'     (with cargo-nextest)
#   scripts/test.sh booking                (with plain cargo test)
set -euo pipefail

# Work from the repository root whatever the caller's directory.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
	echo "install Rust from https://rustup.rs (the stable toolchain)" >&2
	exit 1
fi

echo "==> services"
# Through bash, so that a checkout that lost the executable bits still works.
# With Chromium for the console's browser tests, unless they are skipped.
if [[ "${HAP_SKIP_BROWSER_TESTS:-0}" == 1 ]]; then
	bash scripts/services.sh
else
	HAP_WITH_BROWSER=1 bash scripts/services.sh
fi

# The end-to-end tests connect here to create a scratch database per test
# (TestDb in tests/src/lib.rs), so this must be a server-level URL (the
# `postgres` maintenance database).
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# What HAP itself (and the end-to-end tests driving it) connect to.
export HAP_DATABASE_URL="${HAP_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hap}"
export HAP_AMQP_URL="${HAP_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

echo "==> fmt"
cargo fmt --all -- --check

echo "==> clippy"
# --locked everywhere: the committed Cargo.lock is what gets tested; a build
# that needs to change it is a bug to fix, not something to paper over.
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build"
# The end-to-end tests start the real `hap` binary (to kill it, among other things); building it
# here once keeps every test from waiting on that build.
cargo build --workspace --locked --bins

echo "==> test"
# nextest runs each test in its own process, which keeps one test's global state (the
# metrics recorder, a killed child process) from leaking into another's.
if cargo nextest --version >/dev/null 2>&1; then
	cargo nextest run --workspace --locked --no-fail-fast "$@"
else
	cargo test --workspace --locked --no-fail-fast "$@"
fi
