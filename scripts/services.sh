#!/usr/bin/env bash
# Make sure the two services HAP needs are up before we build, test or run it:
#
#   * PostgreSQL >= 13 on 127.0.0.1:5432, user `postgres` (trust auth, or the
#     password carried by HAP_DATABASE_URL);
#   * RabbitMQ >= 3.10 on 127.0.0.1:5672, guest/guest;
#   * with HAP_WITH_BROWSER=1 also Chromium at /usr/bin/chromium, which the
#     console's browser tests drive headless (running HAP needs no browser).
#
# For each service, in order: already answering -> nothing to do; installed
# but stopped -> start it; missing and we are root with apt-get -> install it
# and start it; otherwise print what to install and exit 1. Then wait (bounded)
# until both answer. Chromium likewise: there -> nothing to do; missing ->
# install it as root with apt-get, or print how to and exit 1.
#
# Environment:
#   HAP_SKIP_SERVICES=1     do nothing at all (services are managed elsewhere).
#   HAP_DATABASE_URL        where HAP's PostgreSQL is. A non-local host is only
#   HAP_AMQP_URL            probed, never started; same for RabbitMQ.
#   HAP_SERVICES_TIMEOUT    seconds to wait for each service (default 60).
#   HAP_WITH_BROWSER=1      also make sure Chromium is installed (scripts/test.sh
#                           sets it: the console's browser tests fail without it,
#                           unless HAP_SKIP_BROWSER_TESTS=1).
#
# Safe to run repeatedly and from several shells at once: every run takes a
# lock, and every step first checks whether it is still needed.
set -euo pipefail

# rabbitmq-server, rabbitmqctl and friends live in /usr/sbin, which is not on
# a regular user's PATH on Debian; appending keeps the user's own tools first.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly TIMEOUT="${HAP_SERVICES_TIMEOUT:-60}"
readonly DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/hap"
readonly DEFAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"

# Diagnostics go to stderr so that stdout stays clean for whoever calls us.
log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: error: %s\n' "$*" >&2
	exit 1
}

if [[ "${HAP_SKIP_SERVICES:-0}" == 1 ]]; then
	log "HAP_SKIP_SERVICES=1: not checking or starting PostgreSQL/RabbitMQ"
	exit 0
fi

[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "HAP_SERVICES_TIMEOUT must be a whole number of seconds, not '$TIMEOUT'"

# Serialize concurrent runs (say, two terminals running scripts/test.sh), so
# that only one of them installs or starts anything; the others then find the
# services up. We re-run this script under flock(1) rather than holding the
# lock on a descriptor of our own: `-o` keeps the lock out of everything the
# script spawns, because a daemon started from here (postgres, the Erlang VM,
# epmd) would otherwise inherit the lock and hold it for the rest of its life.
# Per-user lock file, since a root-owned one in the shared /tmp would lock
# everyone else out. Without flock (e.g. macOS) runs simply go unserialized.
if [[ -z "${HAP_SERVICES_LOCKED:-}" ]] && command -v flock >/dev/null 2>&1; then
	export HAP_SERVICES_LOCKED=1
	rc=0
	flock -o -E 75 -w $((TIMEOUT * 4 + 10)) "${TMPDIR:-/tmp}/hap-services.$(id -u).lock" \
		bash "${BASH_SOURCE[0]}" "$@" || rc=$?
	[[ "$rc" == 75 ]] && die "another scripts/services.sh has been running for too long; giving up waiting for it"
	exit "$rc"
fi
# (Inside the lock now; keep the marker out of the daemons we may start.)
unset HAP_SERVICES_LOCKED

# Output of start/install commands goes to a private log file rather than our
# stdout: a daemon that inherited our stdout pipe would keep it open forever
# and hang any caller that reads it (CI log capture, `$(...)`). The file is
# shown only when something fails.
CMD_LOG="$(mktemp "${TMPDIR:-/tmp}/hap-services.XXXXXX")"
readonly CMD_LOG
trap 'rm -f "$CMD_LOG"' EXIT

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# systemd is only usable when it is PID 1; in containers `systemctl` is often
# installed but talks to nothing, so its presence alone proves nothing.
systemd_running() { [[ -d /run/systemd/system ]] && have systemctl; }

# Run a command that may start a daemon: stdin from /dev/null (CI has no
# stdin), output to the log file.
run_logged() {
	printf '+ %s\n' "$*" >>"$CMD_LOG"
	"$@" </dev/null >>"$CMD_LOG" 2>&1
}

# Like run_logged, but with root privileges: directly when we are root, via
# passwordless sudo otherwise (never prompting: CI has no terminal).
run_as_root() {
	if is_root; then
		run_logged "$@"
	elif have sudo && sudo -n true 2>/dev/null; then
		run_logged sudo -n "$@"
	else
		die "starting this needs root; run as root: $*"
	fi
}

show_cmd_log() {
	if [[ -s "$CMD_LOG" ]]; then
		log "output of the commands run so far:"
		sed 's/^/    /' "$CMD_LOG" >&2
	fi
}

# Is TCP host:port accepting connections? Uses bash's own /dev/tcp, so no
# netcat is needed. `timeout` guards against black-holed remote hosts, where
# connect() would otherwise block for the kernel's ~2 minute limit.
tcp_open() {
	local host="$1" port="$2"
	if have timeout; then
		# shellcheck disable=SC2016 # $0/$1 are expanded by the inner bash.
		timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
	else
		(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
	fi
}

# Split scheme://[user[:password]@]host[:port][/path][?query] into URL_USER,
# URL_PASSWORD, URL_HOST and URL_PORT. Good enough for the single-host URLs
# HAP takes; the URL itself is still handed as-is to the Rust code.
parse_url() {
	local url="$1" default_port="$2" rest authority userinfo="" hostport
	rest="${url#*://}"
	authority="${rest%%[/?]*}"
	if [[ "$authority" == *@* ]]; then
		userinfo="${authority%@*}"
		hostport="${authority##*@}"
	else
		hostport="$authority"
	fi
	URL_USER="${userinfo%%:*}"
	URL_PASSWORD=""
	[[ "$userinfo" == *:* ]] && URL_PASSWORD="${userinfo#*:}"
	if [[ "$hostport" == \[* ]]; then # IPv6 literal: [::1]:5432
		URL_HOST="${hostport#\[}"
		URL_HOST="${URL_HOST%%\]*}"
		URL_PORT="${hostport##*\]}"
		URL_PORT="${URL_PORT#:}"
	else
		URL_HOST="${hostport%%:*}"
		URL_PORT=""
		[[ "$hostport" == *:* ]] && URL_PORT="${hostport##*:}"
	fi
	# An empty host means "local default" for libpq.
	URL_HOST="${URL_HOST:-127.0.0.1}"
	URL_PORT="${URL_PORT:-$default_port}"
}

# Only services on this machine are ours to start or install.
is_local_host() {
	case "$1" in
	localhost | 127.* | ::1 | 0.0.0.0) return 0 ;;
	*) return 1 ;;
	esac
}

# "3.10.8" >= "3.10"? (sort -V knows that 3.9 < 3.10.)
version_at_least() {
	printf '%s\n%s\n' "$2" "$1" | sort -V -C
}

# ---------------------------------------------------------------------------
# Where the services are
# ---------------------------------------------------------------------------

parse_url "${HAP_DATABASE_URL:-$DEFAULT_DATABASE_URL}" 5432
readonly PG_HOST="$URL_HOST" PG_PORT="$URL_PORT" PG_USER="${URL_USER:-postgres}"
# libpq wants the password decoded (%40 -> @).
PG_PASSWORD="$(printf '%b' "${URL_PASSWORD//%/\\x}")"
readonly PG_PASSWORD

# The first node of a cluster's comma-separated list stands for the broker.
AMQP_URL="${HAP_AMQP_URL:-$DEFAULT_AMQP_URL}"
parse_url "${AMQP_URL%%,*}" 5672
readonly MQ_HOST="$URL_HOST" MQ_PORT="$URL_PORT"

PG_LOCAL=0 MQ_LOCAL=0
is_local_host "$PG_HOST" && PG_LOCAL=1
is_local_host "$MQ_HOST" && MQ_LOCAL=1
readonly PG_LOCAL MQ_LOCAL

# ---------------------------------------------------------------------------
# Probes. Both return 0 = ready, 1 = something is there but not ready yet
# (starting or stopping: do not start a second copy, just wait),
# 2 = nothing answers.
# ---------------------------------------------------------------------------

pg_state() {
	local rc=0
	if have pg_isready; then
		# pg_isready: 0 accepting, 1 rejecting (starting up), 2 no response,
		# 3 no attempt (bad parameters, treated as "nothing answers").
		pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1 || rc=$?
		[[ "$rc" == 3 ]] && rc=2
		return "$rc"
	fi
	tcp_open "$PG_HOST" "$PG_PORT" || return 2
}

# The RabbitMQ CLI tools only work for root or the rabbitmq user (they need
# the node's Erlang cookie; Debian's wrappers refuse anybody else).
rabbit_cli_usable() {
	have rabbitmq-diagnostics && { is_root || [[ "$(id -un)" == rabbitmq ]]; }
}

mq_state() {
	tcp_open "$MQ_HOST" "$MQ_PORT" || return 2
	# The AMQP port opens late in the boot, but a node that is shutting down
	# can still hold it; ping tells a live node from a dying one. It can only
	# reach the local node, hence the MQ_LOCAL condition.
	if [[ "$MQ_LOCAL" == 1 ]] && rabbit_cli_usable; then
		rabbitmq-diagnostics -q ping </dev/null >/dev/null 2>&1 || return 1
	fi
	return 0
}

state_of() {
	local rc=0
	"$1" || rc=$?
	echo "$rc"
}

# ---------------------------------------------------------------------------
# Installing and starting
# ---------------------------------------------------------------------------

# A PostgreSQL *server* is installed (client tools alone do not count).
# Debian keeps server binaries under /usr/lib/postgresql/<version>/bin.
postgres_installed() {
	compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || have postgres || have pg_ctl
}

rabbitmq_installed() { have rabbitmq-server; }

# Newest PostgreSQL server version installed the Debian way, e.g. "15".
newest_pg_version() {
	local dir
	for dir in /usr/lib/postgresql/*/bin/postgres; do
		[[ -e "$dir" ]] || continue
		dir="${dir#/usr/lib/postgresql/}"
		echo "${dir%%/*}"
	done | sort -V | tail -n 1
}

# Debian cluster ("<version> <name> <status>") configured on our port, if any.
pg_cluster_on_port() {
	pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

# Let local TCP connections in as any user without a password. Called only
# for a server this script installed or created itself, so it never loosens
# the authentication of an install somebody else set up. pg_hba.conf is read
# top-down, first match wins: the lines go at the top.
trust_local_tcp() {
	local version="$1" name="$2" hba tmp
	hba="/etc/postgresql/$version/$name/pg_hba.conf"
	[[ -f "$hba" ]] || die "cannot find $hba to allow local connections"
	if grep -qxF 'host all all 127.0.0.1/32 trust' "$hba" &&
		grep -qxF 'host all all ::1/128 trust' "$hba"; then
		return 0
	fi
	log "allowing password-less local TCP connections in $hba (this script created the server)"
	tmp="$(mktemp)"
	{
		echo "# Added by HAP's scripts/services.sh, which installed this server for"
		echo "# local development: local TCP connections need no password."
		echo "host all all 127.0.0.1/32 trust"
		echo "host all all ::1/128 trust"
		echo
		cat "$hba"
	} >"$tmp"
	# `cat >` rewrites the file in place, keeping its owner and mode
	# (postgres:postgres 0640), which a `mv` would not.
	cat "$tmp" >"$hba" || die "could not write $hba"
	rm -f "$tmp"
}

# Set by install_packages: the PostgreSQL server is ours to configure.
PG_INSTALLED_HERE=0

install_packages() {
	log "installing $* with apt-get (this takes a minute)"
	run_logged apt-get update || {
		show_cmd_log
		die "apt-get update failed"
	}
	# noninteractive: no debconf questions, there may be no terminal (CI).
	run_logged env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" || {
		show_cmd_log
		die "apt-get install -y $* failed"
	}
	[[ " $* " == *" postgresql "* ]] && PG_INSTALLED_HERE=1
	return 0
}

start_postgres() {
	local cluster version name status
	if have pg_lsclusters; then
		# Debian/Ubuntu (postgresql-common): one "cluster" per server.
		cluster="$(pg_cluster_on_port)"
		if [[ -z "$cluster" ]]; then
			if [[ -n "$(pg_lsclusters -h 2>/dev/null)" ]]; then
				# Somebody configured other clusters; do not guess.
				die "PostgreSQL clusters exist, but none on port $PG_PORT (see pg_lsclusters); start one there or set HAP_DATABASE_URL"
			fi
			version="$(newest_pg_version)"
			[[ -n "$version" ]] || die "PostgreSQL is installed but no server version is under /usr/lib/postgresql"
			# Editing the new cluster's pg_hba.conf below needs root too.
			is_root || die "PostgreSQL $version has no cluster; create one as root: sudo pg_createcluster $version main --port $PG_PORT --start"
			log "creating PostgreSQL $version cluster 'main' on port $PG_PORT"
			run_as_root pg_createcluster "$version" main --port "$PG_PORT" || {
				show_cmd_log
				die "pg_createcluster $version main failed"
			}
			# A brand-new cluster is ours, like a fresh install: make it usable.
			PG_INSTALLED_HERE=1
			cluster="$(pg_cluster_on_port)"
		fi
		read -r version name status <<<"$cluster"
		if [[ "$PG_INSTALLED_HERE" == 1 ]]; then
			trust_local_tcp "$version" "$name"
		fi
		if [[ "$status" == online* ]]; then
			# apt's postinst may have started it already: reload so that the
			# pg_hba.conf change takes effect; otherwise it is just starting up.
			[[ "$PG_INSTALLED_HERE" == 1 ]] && run_as_root pg_ctlcluster "$version" "$name" reload
			return 0
		fi
		log "starting PostgreSQL $version/$name"
		if systemd_running; then
			run_as_root systemctl start "postgresql@$version-$name"
		else
			# Without systemd as PID 1, pg_ctlcluster must not try to hand
			# over to systemctl.
			run_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
		fi
	elif systemd_running; then
		log "starting PostgreSQL (systemctl start postgresql)"
		run_as_root systemctl start postgresql
	else
		die "PostgreSQL is installed but stopped, and without pg_ctlcluster or systemd this script does not know how to start it; please start it on $PG_HOST:$PG_PORT"
	fi
}

start_rabbitmq() {
	log "starting RabbitMQ"
	if systemd_running; then
		run_as_root systemctl start rabbitmq-server
	elif is_root || { have sudo && sudo -n true 2>/dev/null; }; then
		# -detached daemonizes. Debian's wrapper drops to the rabbitmq user.
		run_as_root rabbitmq-server -detached
	else
		# Debian's wrapper, run as an ordinary user, starts a foreground
		# server instead of refusing, so do not even try.
		die "RabbitMQ is installed but stopped; start it as root: sudo rabbitmq-server -detached"
	fi
}

# Bounded wait for a probe to report "ready" (polls every half second).
wait_until_ready() {
	local what="$1" probe="$2" where="$3" deadline=$((SECONDS + TIMEOUT)) rc
	while :; do
		rc=0
		"$probe" || rc=$?
		[[ "$rc" == 0 ]] && return 0
		if ((SECONDS >= deadline)); then
			show_cmd_log
			if [[ "$rc" == 1 ]]; then
				die "$what on $where is listening but not ready after ${TIMEOUT}s (still booting, or another server holds the port?)"
			fi
			die "$what did not answer on $where within ${TIMEOUT}s"
		fi
		sleep 0.5
	done
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

pg="$(state_of pg_state)"
mq="$(state_of mq_state)"

# Anything local that is down and not installed: install all of it in a single
# apt-get run, or tell the user what to do.
missing=()
[[ "$PG_LOCAL" == 1 && "$pg" == 2 ]] && ! postgres_installed && missing+=(postgresql)
[[ "$MQ_LOCAL" == 1 && "$mq" == 2 ]] && ! rabbitmq_installed && missing+=(rabbitmq-server)
if ((${#missing[@]} > 0)); then
	if is_root && have apt-get; then
		install_packages "${missing[@]}"
		# The packages' postinst scripts may have started them already.
		pg="$(state_of pg_state)"
		mq="$(state_of mq_state)"
	else
		{
			echo "services: not installed here: ${missing[*]}. Either install with:"
			echo "    sudo apt-get install ${missing[*]}"
			echo "or run PostgreSQL and RabbitMQ in Docker, from $REPO_ROOT:"
			echo "    docker compose up -d postgres rabbitmq"
			echo "(or point HAP_DATABASE_URL / HAP_AMQP_URL at running servers and set HAP_SKIP_SERVICES=1)"
		} >&2
		exit 1
	fi
fi

# Start what is local and down. Remote services are only waited for below.
if [[ "$pg" == 2 && "$PG_LOCAL" == 1 ]] || [[ "$PG_INSTALLED_HERE" == 1 && "$PG_LOCAL" == 1 ]]; then
	# Also after a fresh install that apt already started: start_postgres
	# then just applies the pg_hba.conf change.
	start_postgres || log "starting PostgreSQL reported an error; waiting for it anyway"
fi
if [[ "$mq" == 2 && "$MQ_LOCAL" == 1 ]]; then
	# Starting while the node is still booting or stopping fails harmlessly
	# ("node already running"), hence only a warning; the wait decides.
	start_rabbitmq || log "starting RabbitMQ reported an error; waiting for it anyway"
fi

wait_until_ready "PostgreSQL" pg_state "$PG_HOST:$PG_PORT"
wait_until_ready "RabbitMQ" mq_state "$MQ_HOST:$MQ_PORT"

# Version checks, best effort: if we cannot ask (no psql, a password we cannot
# pass, CLI not usable for this user), the tests will tell.
if have psql; then
	# -w: never prompt for a password (psql would ask on the terminal, not
	# stdin, and hang an unattended run).
	pg_version="$(PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 psql -w -X -A -t -q \
		-h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
		-c 'SHOW server_version_num' </dev/null 2>/dev/null || true)"
	if [[ "$pg_version" =~ ^[0-9]+$ ]] && ((pg_version < 130000)); then
		die "PostgreSQL on $PG_HOST:$PG_PORT is version $pg_version; HAP needs 13 or newer"
	fi
fi
if [[ "$MQ_LOCAL" == 1 ]] && rabbit_cli_usable; then
	mq_version="$(rabbitmq-diagnostics -q server_version </dev/null 2>/dev/null || true)"
	if [[ "$mq_version" =~ ^[0-9]+\.[0-9]+ ]] && ! version_at_least "$mq_version" 3.10; then
		die "RabbitMQ on $MQ_HOST:$MQ_PORT is version $mq_version; HAP needs 3.10 or newer"
	fi
	# A node under a disk or memory alarm answers pings but blocks every
	# publisher: HAP would start and then wait forever on its first confirm.
	if ! alarms="$(timeout 30 rabbitmq-diagnostics -q check_local_alarms </dev/null 2>&1)"; then
		die "RabbitMQ on $MQ_HOST:$MQ_PORT reports a resource alarm, so it blocks publishers (free disk space or memory, then retry): $alarms"
	fi
fi

# The console's browser tests drive Debian's Chromium headless, and fail without
# it (unless HAP_SKIP_BROWSER_TESTS=1): when asked for, a Chromium that cannot be
# installed stops us as a missing PostgreSQL or RabbitMQ does. Only for the tests
# (scripts/test.sh sets HAP_WITH_BROWSER=1): running HAP needs no browser.
if [[ "${HAP_WITH_BROWSER:-0}" == 1 && ! -x /usr/bin/chromium ]]; then
	if is_root && have apt-get; then
		install_packages chromium
		[[ -x /usr/bin/chromium ]] || {
			show_cmd_log
			die "apt-get installed chromium, but /usr/bin/chromium is not there"
		}
	else
		{
			echo "services: chromium is not installed here (the console's browser tests need it). Install it with:"
			echo "    sudo apt-get install chromium"
			echo "or run as root: HAP_WITH_BROWSER=1 bash scripts/services.sh"
			echo "(or skip the browser tests with HAP_SKIP_BROWSER_TESTS=1, and leave HAP_WITH_BROWSER unset)"
		} >&2
		exit 1
	fi
fi

log "PostgreSQL ($PG_HOST:$PG_PORT) and RabbitMQ ($MQ_HOST:$MQ_PORT) are up"
