#!/usr/bin/env bash
# THE run command (see the README): brings up PostgreSQL and RabbitMQ with
# scripts/services.sh, then runs the HAP server in release mode. Extra
# arguments go to `hap serve`, e.g. scripts/run.sh --help
set -euo pipefail

# Work from the repository root whatever the caller's directory.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
	echo "install Rust from https://rustup.rs (the stable toolchain)" >&2
	exit 1
fi

# Through bash, so that a checkout that lost the executable bits still works.
bash scripts/services.sh

# exec: the server replaces this shell, so Ctrl-C and signals from a process
# supervisor reach it directly. --locked: run exactly the committed Cargo.lock.
exec cargo run --release --locked --bin hap -- serve "$@"
