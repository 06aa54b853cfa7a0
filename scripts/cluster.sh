#!/usr/bin/env bash
# A local RabbitMQ cluster of N nodes on this machine, for tests and for trying HAP against a
# cluster. It leaves the machine's own RabbitMQ (on 5672) alone, and several clusters can run
# at once, each with its own directory and ports.
#
# Usage: scripts/cluster.sh [--dir DIR] [--nodes N] [--base-port PORT] COMMAND
#
#   up           Start every node, join them into one cluster, and wait until
#                `rabbitmqctl cluster_status` shows every node running. Prints the value for
#                HAP_AMQP_URL (the nodes' URLs, comma-separated) on stdout. A cluster that is
#                up in DIR already is left as it is (its URLs are printed again).
#   down         Stop every node (kill -9) and delete DIR. Succeeds when nothing is there.
#   kill N       kill -9 node N's Erlang VM (nodes count from 1).
#   start N      Start node N again, and wait until it is back in the cluster. (A node that was
#                not the last of its cluster to stop waits for that one: when every node is
#                down, start them together, e.g. `start 1 & start 2 & start 3 & wait`.)
#   status       Each node, running or down, and the nodes running in the cluster.
#   urls         Print the HAP_AMQP_URL value (also before `up`, from the options).
#   ctl N ARG…   Run `rabbitmqctl ARG…` against node N, e.g. `ctl 1 list_queues name members`.
#
# Options, or the variables in brackets. `up` records them in DIR, so later commands need only
# --dir:
#   --dir DIR         where the nodes keep their data and logs [HAP_CLUSTER_DIR]; default
#                     .hap/cluster
#   --nodes N         how many nodes [HAP_CLUSTER_NODES]; default 3
#   --base-port PORT  node 1's AMQP port; node i listens on PORT+i-1, and on PORT+i-1+20000
#                     for Erlang distribution [HAP_CLUSTER_BASE_PORT]; default 5681
#   HAP_CLUSTER_TIMEOUT  seconds a node may take to boot or rejoin; default 90
#
# Node i is named hap-PORT-i@localhost (PORT being the base port, so that two clusters never
# share a name), listens on 127.0.0.1 only, runs no plugin (no management UI) and lets `guest`
# in from localhost, as RabbitMQ does by default. Its data and logs are in DIR/node-i; the
# cluster's Erlang cookie is DIR's own, and /etc/rabbitmq is not read. Nodes run as the
# caller, out of the caller's session, and outlive it until `down`.
#
# Messages go to stderr. Any failure exits non-zero saying what failed (and which log to read);
# usage errors exit 2.
set -euo pipefail

readonly SERVER_BIN=/usr/lib/rabbitmq/bin
readonly TIMEOUT="${HAP_CLUSTER_TIMEOUT:-90}"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
	printf 'cluster: error: %s\n' "$*" >&2
	exit 1
}
usage() {
	sed -n '/^# Usage/,/^# Messages/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

dir="${HAP_CLUSTER_DIR:-.hap/cluster}"
nodes="${HAP_CLUSTER_NODES:-}"
base_port="${HAP_CLUSTER_BASE_PORT:-}"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--dir | --nodes | --base-port)
		[[ $# -ge 2 ]] || usage
		case "$1" in
		--dir) dir="$2" ;;
		--nodes) nodes="$2" ;;
		--base-port) base_port="$2" ;;
		esac
		shift 2
		;;
	-h | --help) usage ;;
	-*) usage ;;
	*) break ;;
	esac
done
[[ $# -ge 1 ]] || usage
command="$1"
shift

[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "HAP_CLUSTER_TIMEOUT must be a whole number of seconds, not '$TIMEOUT'"
[[ -x "$SERVER_BIN/rabbitmq-server" ]] ||
	die "no RabbitMQ at $SERVER_BIN (Debian's rabbitmq-server package puts it there: apt-get install rabbitmq-server)"
[[ -n "$dir" ]] || die "--dir must not be empty"
dir="$(realpath -m "$dir")"
readonly dir settings="$dir/cluster.env"

# What `up` recorded wins over the defaults; options given again must agree with it.
if [[ -f "$settings" ]]; then
	# shellcheck source=/dev/null
	source "$settings"
	[[ -z "$nodes" || "$nodes" == "$NODES" ]] || die "$dir holds a cluster of $NODES nodes, not $nodes; run down first"
	[[ -z "$base_port" || "$base_port" == "$BASE_PORT" ]] || die "$dir holds a cluster on port $BASE_PORT, not $base_port; run down first"
	nodes="$NODES" base_port="$BASE_PORT"
fi
nodes="${nodes:-3}"
base_port="${base_port:-5681}"
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || die "--nodes must be a number from 1 to 99, not '$nodes'"
[[ "$base_port" =~ ^[1-9][0-9]*$ ]] && ((base_port >= 1024 && base_port + nodes - 1 + 20000 <= 65535)) ||
	die "--base-port must be from 1024 to $((45536 - nodes)), not '$base_port'"

name() { printf 'hap-%s-%s@localhost' "$base_port" "$1"; }
amqp_port() { printf '%s' $((base_port + $1 - 1)); }
node_dir() { printf '%s/node-%s' "$dir" "$1"; }
check_node() {
	[[ "$1" =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= nodes)) || die "there is no node '$1' (nodes 1..$nodes)"
}

# Node N's Erlang VM's process id, if it runs (the node writes it as it boots).
vm_pid() {
	local pid
	pid="$(cat "$(node_dir "$1")/pid" 2>/dev/null)" || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

# Runs a command in node N's environment: its name, ports, files, and the cluster's cookie
# (in HOME). The machine's RabbitMQ settings (/etc/rabbitmq) are not read.
with_node_env() {
	local i="$1" at
	shift
	at="$(node_dir "$i")"
	env -u ERL_FLAGS -u RABBITMQ_ERLANG_COOKIE \
		HOME="$dir" \
		ERL_EPMD_ADDRESS=127.0.0.1 \
		RABBITMQ_NODENAME="$(name "$i")" \
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
		RABBITMQ_NODE_PORT="$(amqp_port "$i")" \
		RABBITMQ_DIST_PORT=$(($(amqp_port "$i") + 20000)) \
		RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
		RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
		RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
		RABBITMQ_MNESIA_BASE="$at/mnesia" \
		RABBITMQ_MNESIA_DIR="$at/mnesia/$(name "$i")" \
		RABBITMQ_LOG_BASE="$at/log" \
		RABBITMQ_PID_FILE="$at/pid" \
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
		"$@"
}

ctl() {
	local i="$1"
	shift
	with_node_env "$i" "$SERVER_BIN/rabbitmqctl" -n "$(name "$i")" "$@"
}

# The nodes running in the cluster as node N sees them, one a line (none if it does not answer).
running_nodes() {
	ctl "$1" cluster_status --formatter json 2>/dev/null |
		grep -o '"running_nodes":\[[^]]*\]' | grep -o 'hap-[^"]*' || true
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() {
	local i="$1" at
	at="$(node_dir "$i")"
	mkdir -p "$at/log" "$at/mnesia"
	rm -f "$at/pid"
	# A session of its own (so that the caller's signals and terminal do not reach it), and
	# nothing of the caller's open: a test reading our stdout sees it end when we do.
	with_node_env "$i" setsid -f "$SERVER_BIN/rabbitmq-server" >"$at/log/stdout.log" 2>&1 </dev/null
}

# Waits until node N answers AMQP: it has booted (and joined the cluster, if it had to).
await_boot() {
	local i="$1" deadline=$((SECONDS + TIMEOUT)) logs
	logs="$(node_dir "$i")/log"
	until answers "$(amqp_port "$i")"; do
		if grep -qs 'BOOT FAILED\|Kernel pid terminated' "$logs/stdout.log"; then
			die "node $i ($(name "$i")) failed to boot; see $logs"
		fi
		((SECONDS < deadline)) || die "node $i ($(name "$i")) did not boot within ${TIMEOUT}s; see $logs"
		sleep 0.1
	done
}

# Waits until node N sees every node whose VM runs as running in its cluster.
await_cluster() {
	local i="$1" deadline=$((SECONDS + TIMEOUT)) j running missing
	while true; do
		running="$(running_nodes "$i")"
		missing=()
		for ((j = 1; j <= nodes; j++)); do
			if vm_pid "$j" >/dev/null && ! grep -qx "$(name "$j")" <<<"$running"; then
				missing+=("$(name "$j")")
			fi
		done
		((${#missing[@]} == 0)) && return
		((SECONDS < deadline)) ||
			die "node $i does not see ${missing[*]} running in its cluster after ${TIMEOUT}s; see $(node_dir "$i")/log"
		sleep 0.3
	done
}

urls() {
	local i list=()
	for ((i = 1; i <= nodes; i++)); do
		list+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f")
	done
	(IFS=, && printf '%s\n' "${list[*]}")
}

up() {
	local i port running=0
	if [[ -f "$settings" ]]; then
		for ((i = 1; i <= nodes; i++)); do
			vm_pid "$i" >/dev/null && running=$((running + 1))
		done
		if ((running == nodes)); then
			await_cluster 1
			log "the cluster in $dir is up already"
			urls
			return
		fi
		((running == 0)) || die "$running of $nodes nodes run in $dir; start the others, or run down first"
	elif [[ -e "$dir" ]] && [[ -n "$(ls -A "$dir")" ]]; then
		die "$dir is not empty and holds no cluster; choose another --dir"
	fi
	for ((i = 1; i <= nodes; i++)); do
		for port in "$(amqp_port "$i")" $(($(amqp_port "$i") + 20000)); do
			answers "$port" && die "port $port is taken; choose another --base-port"
		done
	done
	mkdir -p "$dir"
	if [[ ! -f "$dir/.erlang.cookie" ]]; then
		(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/.erlang.cookie")
	fi
	printf 'NODES=%s\nBASE_PORT=%s\n' "$nodes" "$base_port" >"$settings"
	: >"$dir/rabbitmq-env.conf"
	echo '[].' >"$dir/enabled_plugins"
	# A blank node joins node 1 as it boots (classic peer discovery), so no node restarts to
	# join. Erlang terms, and no rabbitmq.conf: its schema costs every node a second of CPU.
	echo "[{rabbit, [{cluster_nodes, {['$(name 1)'], disc}}]}]." >"$dir/advanced.config"
	# Node 1 first, and the others once it has booted: a node that joins node 1 while node 1
	# is still setting up its database can fail to boot (RabbitMQ 3.10 checks the tables'
	# shapes, which node 1 is still migrating).
	start_node 1
	await_boot 1
	for ((i = 2; i <= nodes; i++)); do
		start_node "$i"
	done
	for ((i = 2; i <= nodes; i++)); do
		await_boot "$i"
	done
	await_cluster 1
	log "$nodes nodes up in $dir after ${SECONDS}s"
	urls
}

down() {
	local i pid
	if [[ ! -f "$settings" ]]; then
		[[ ! -e "$dir" ]] || [[ -z "$(ls -A "$dir")" ]] || die "$dir holds no cluster; not deleting it"
		rm -rf "$dir"
		return
	fi
	for ((i = 1; i <= nodes; i++)); do
		if pid="$(vm_pid "$i")"; then
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
	for ((i = 1; i <= nodes; i++)); do
		while vm_pid "$i" >/dev/null; do sleep 0.05; done
	done
	rm -rf "$dir"
	log "stopped every node and deleted $dir"
}

case "$command" in
up | down | urls) "$command" ;;
kill | start | status | ctl)
	[[ -f "$settings" ]] || die "no cluster in $dir (run up first)"
	case "$command" in
	kill)
		check_node "${1:-}"
		pid="$(vm_pid "$1")" || die "node $1 is not running"
		kill -9 "$pid"
		while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
		log "killed node $1 ($(name "$1"), pid $pid)"
		;;
	start)
		check_node "${1:-}"
		if ! vm_pid "$1" >/dev/null; then
			start_node "$1"
			await_boot "$1"
		fi
		await_cluster "$1"
		log "node $1 is back in the cluster after ${SECONDS}s"
		;;
	status)
		for ((i = 1; i <= nodes; i++)); do
			if pid="$(vm_pid "$i")"; then state="running (pid $pid)"; else state=down; fi
			printf '%s  %s  127.0.0.1:%s  %s\n' "$i" "$(name "$i")" "$(amqp_port "$i")" "$state"
		done
		for ((i = 1; i <= nodes; i++)); do
			if vm_pid "$i" >/dev/null; then
				printf 'running in the cluster, as node %s sees it: %s\n' "$i" "$(running_nodes "$i" | sort | paste -sd' ')"
				break
			fi
		done
		;;
	ctl)
		check_node "${1:-}"
		i="$1"
		shift
		ctl "$i" "$@"
		;;
	esac
	;;
*) usage ;;
esac
