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

# Tokens are verified with HAP_AUTH_SECRET (or an identity provider's public key). With
# neither, and authentication not switched off, this checkout gets a random secret of its
# own in .hap/secret (ignored by git, readable by its owner only), so that the quick start
# needs nothing more.
if [ -z "${HAP_AUTH_SECRET:-}" ] && [ -z "${HAP_AUTH_PUBLIC_KEY_FILE:-}" ] \
	&& [ "${HAP_INSECURE_NO_AUTH:-false}" != "true" ]; then
	mkdir -p .hap
	if [ ! -s .hap/secret ]; then
		(umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > .hap/secret)
	fi
	HAP_AUTH_SECRET="$(cat .hap/secret)"
	export HAP_AUTH_SECRET
fi

# Personal data needs its master key (HAP_DATA_KEY or HAP_DATA_KEY_FILE) as tokens need theirs:
# without one, this checkout gets its own random key in .hap/data-key (readable by its owner
# only). Losing that file makes every subject key, and so all personal data, unreadable: keep
# a copy apart from the database's backups.
if [ -z "${HAP_DATA_KEY:-}" ] && [ -z "${HAP_DATA_KEY_FILE:-}" ] \
	&& [ "${HAP_INSECURE_NO_AUTH:-false}" != "true" ]; then
	mkdir -p .hap
	if [ ! -s .hap/data-key ]; then
		(umask 077 && head -c 32 /dev/urandom | base64 > .hap/data-key)
	fi
	HAP_DATA_KEY_FILE="$PWD/.hap/data-key"
	export HAP_DATA_KEY_FILE
fi

# --locked: run exactly the committed Cargo.lock.
cargo build --release --locked --bin hap

# A token with every scope for the README's tour, valid for 12 hours.
if [ -n "${HAP_AUTH_SECRET:-}" ]; then
	mkdir -p .hap
	scopes="patients:read patients:write patients:erase physicians:read physicians:write physicians:erase"
	scopes="$scopes consultations:read consultations:write records:read records:write"
	(umask 077 && cargo run --quiet --release --locked --bin hap -- token \
		--tenant default --sub "$(id -un)" --scope "$scopes" --ttl 12h > .hap/token)
	echo "==> a token for the tour is in .hap/token: export TOKEN=\$(cat .hap/token)"
fi

# exec: the server replaces this shell, so Ctrl-C and signals from a process
# supervisor reach it directly.
exec cargo run --release --locked --bin hap -- serve "$@"
