#!/usr/bin/env bash
# Run the Parley services locally, each as its own process (used by `make up`).
#
#   scripts/up.sh            start everything, wait until ready, stay in the foreground;
#                            Ctrl-C / SIGTERM stops what it started
#   scripts/up.sh --detach   start everything, wait until ready, return (stop: scripts/down.sh)
#
# Builds nothing: `make up` runs `cargo build --workspace --bins` first. Binaries come from
# $CARGO_TARGET_DIR/debug (default $HOME/.cache/parley/target). Postgres, Redis and the S3
# object store come from scripts/deps.sh (.local/deps.env). Logs: .local/logs/<svc>.log (values
# of *SECRET*/*PASSWORD*/*PRIVATE_KEY*/*_TOKEN settings and URL passwords masked), pids in
# .local/run/<svc>.pid.
# A service already running from this checkout's pid files is restarted.
set -euo pipefail

# ---- services, in start order: one line each ----------------------------------------------
# name  binary  ready-check  environment
#   ready-check: tcp:HOST:PORT (port accepts connections), an http:// URL (answers 200), or -
#   environment: KEY=VALUE words (no spaces in values); ${VAR} is expanded at start. Available:
#   PARLEY_DB_URL (database `parley`), PARLEY_PG_URL (admin), PARLEY_REDIS_URL, PARLEY_S3_ENDPOINT,
#   PARLEY_S3_REGION, PARLEY_S3_BUCKET, PARLEY_S3_ACCESS_KEY_ID, PARLEY_S3_SECRET_ACCESS_KEY.
#   Extra words for one service: PARLEY_UP_ENV_<name>, e.g.
#   PARLEY_UP_ENV_gateway='PARLEY__RATE__MESSAGES__N=0' (scripts/bench.sh sets such limits).
# shellcheck disable=SC2016 # expanded later by expand_vars
SERVICES='
messaging     parley-messaging     tcp:127.0.0.1:5051           PARLEY__GRPC__ADDR=127.0.0.1:5051 PARLEY__DATABASE__URL=${PARLEY_DB_URL} PARLEY__REDIS__URL=${PARLEY_REDIS_URL} PARLEY__STORAGE__ENDPOINT=${PARLEY_S3_ENDPOINT} PARLEY__STORAGE__REGION=${PARLEY_S3_REGION} PARLEY__STORAGE__BUCKET=${PARLEY_S3_BUCKET} PARLEY__STORAGE__ACCESS_KEY_ID=${PARLEY_S3_ACCESS_KEY_ID} PARLEY__STORAGE__SECRET_ACCESS_KEY=${PARLEY_S3_SECRET_ACCESS_KEY}
presence      parley-presence      tcp:127.0.0.1:5052           PARLEY__GRPC__ADDR=127.0.0.1:5052 PARLEY__REDIS__URL=${PARLEY_REDIS_URL}
receipts      parley-receipts      tcp:127.0.0.1:5053           PARLEY__GRPC__ADDR=127.0.0.1:5053 PARLEY__DATABASE__URL=${PARLEY_DB_URL} PARLEY__REDIS__URL=${PARLEY_REDIS_URL} PARLEY__MESSAGING__URL=http://127.0.0.1:5051
notification  parley-notification  tcp:127.0.0.1:5054           PARLEY__GRPC__ADDR=127.0.0.1:5054 PARLEY__DATABASE__URL=${PARLEY_DB_URL} PARLEY__REDIS__URL=${PARLEY_REDIS_URL} PARLEY__MESSAGING__URL=http://127.0.0.1:5051 PARLEY__PRESENCE__URL=http://127.0.0.1:5052 PARLEY__WEBHOOK__ALLOW_INTERNAL=true
gateway       parley-gateway       http://127.0.0.1:8080/readyz  PARLEY__HTTP__ADDR=127.0.0.1:8080 PARLEY__MESSAGING__URL=http://127.0.0.1:5051 PARLEY__REDIS__URL=${PARLEY_REDIS_URL} PARLEY__AUTH__DEV_TOKENS=true PARLEY__PRESENCE__URL=http://127.0.0.1:5052 PARLEY__RECEIPTS__URL=http://127.0.0.1:5053 PARLEY__NOTIFICATION__URL=http://127.0.0.1:5054
'
GATEWAY_URL=http://127.0.0.1:8080
# ------------------------------------------------------------------------------------------

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
LOG_DIR="$LOCAL/logs"
RUN_DIR="$LOCAL/run"
TIMEOUT="${PARLEY_UP_TIMEOUT:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parley/target}"
BIN_DIR="$CARGO_TARGET_DIR/${PARLEY_PROFILE:-debug}"

DETACH=no
for arg in "$@"; do
	case "$arg" in
	-d | --detach) DETACH=yes ;;
	-h | --help)
		sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "usage: scripts/up.sh [--detach]" >&2
		exit 2
		;;
	esac
done

say() { printf 'up: %s\n' "$*" >&2; }

# Replace the database of a postgres URL: pg_url_db URL DB
pg_url_db() {
	local url="$1" db="$2" query=""
	if [[ $url == *\?* ]]; then
		query="?${url#*\?}"
		url="${url%%\?*}"
	fi
	local scheme="${url%%://*}" rest="${url#*://}"
	printf '%s://%s/%s%s\n' "$scheme" "${rest%%/*}" "$db" "$query"
}

# Expand ${NAME} references in $1 from the environment.
expand_vars() {
	local s="$1" out="" name
	while [[ $s =~ ^([^$]*)\$\{([A-Za-z_][A-Za-z0-9_]*)\}(.*)$ ]]; do
		out+="${BASH_REMATCH[1]}"
		name="${BASH_REMATCH[2]}"
		out+="${!name-}"
		s="${BASH_REMATCH[3]}"
	done
	printf '%s' "$out$s"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

http_status() { # URL -> prints the status code (000 when unreachable)
	local url="$1"
	if command -v curl >/dev/null 2>&1; then
		curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true
		return 0
	fi
	local rest="${url#http://}" hostport path host port line
	hostport="${rest%%/*}"
	path="/${rest#*/}"
	[[ $rest == */* ]] || path=/
	host="${hostport%%:*}"
	port="${hostport##*:}"
	[[ $hostport == *:* ]] || port=80
	if { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
		IFS=' ' read -r -t 2 _ line _ <&3 || true
		exec 3<&-
		printf '%s' "${line:-000}"
	else
		printf '000'
	fi
}

# host and port a ready check talks to ("" when none)
ready_hostport() {
	local r="$1" hp
	case "$r" in
	tcp:*) hp="${r#tcp:}" ;;
	http://*)
		hp="${r#http://}"
		hp="${hp%%/*}"
		[[ $hp == *:* ]] || hp="$hp:80"
		;;
	*) hp="" ;;
	esac
	printf '%s' "$hp"
}

is_ready() { # ready-check
	local r="$1" hp
	case "$r" in
	tcp:*)
		hp="${r#tcp:}"
		port_open "${hp%:*}" "${hp##*:}"
		;;
	http://*) [[ "$(http_status "$r")" == 200 ]] ;;
	*) return 0 ;;
	esac
}

# ---- Postgres / Redis / S3
"$ROOT/scripts/deps.sh" >/dev/null
# shellcheck disable=SC1091
. "$LOCAL/deps.env"
PARLEY_DB_URL="$(pg_url_db "$PARLEY_PG_URL" parley)"
export PARLEY_PG_URL PARLEY_REDIS_URL PARLEY_DB_URL PARLEY_S3_ENDPOINT PARLEY_S3_REGION PARLEY_S3_BUCKET \
	PARLEY_S3_ACCESS_KEY_ID PARLEY_S3_SECRET_ACCESS_KEY

mkdir -p "$LOG_DIR" "$RUN_DIR"

# ---- parse the table
declare -a NAMES=() BINS=() READY=() ENVS=()
while read -r name bin ready rest; do
	[[ -z ${name:-} || $name == \#* ]] && continue
	NAMES+=("$name")
	BINS+=("$bin")
	READY+=("$ready")
	ENVS+=("${rest:-}")
done <<<"$SERVICES"

# ---- restart what already runs from our pid files
running=()
for name in "${NAMES[@]}"; do
	[[ -s $RUN_DIR/$name.pid ]] && running+=("$name")
done
if ((${#running[@]})); then
	"$ROOT/scripts/down.sh" "${running[@]}" >&2
fi

STARTED=()  # names
STARTED_PIDS=()

stop_started() {
	((${#STARTED[@]})) || return 0
	"$ROOT/scripts/down.sh" "${STARTED[@]}" >&2 || true
	STARTED=()
	STARTED_PIDS=()
}

show_logs() {
	local name
	for name in "${STARTED[@]}"; do
		echo "----- last lines of .local/logs/$name.log -----" >&2
		tail -n 40 "$LOG_DIR/$name.log" >&2 || true
	done
}

fail() {
	say "ERROR: $*"
	show_logs
	stop_started
	exit 1
}

trap 'say "interrupted"; stop_started; exit 130' INT TERM

# ports must be free before anything starts
for i in "${!NAMES[@]}"; do
	[[ -x $BIN_DIR/${BINS[$i]} ]] || continue
	hp="$(ready_hostport "${READY[$i]}")"
	if [[ -n $hp ]] && port_open "${hp%:*}" "${hp##*:}"; then
		say "ERROR: ${NAMES[$i]}: $hp is already in use by another process"
		exit 1
	fi
done

deadline=$((SECONDS + TIMEOUT))
for i in "${!NAMES[@]}"; do
	name="${NAMES[$i]}"
	bin="$BIN_DIR/${BINS[$i]}"
	ready="${READY[$i]}"
	if [[ ! -x $bin ]]; then
		say "skipping $name: $bin does not exist (run 'make build')"
		continue
	fi
	# extra KEY=VALUE words for this service from PARLEY_UP_ENV_<name> (later words win)
	extra="PARLEY_UP_ENV_$name"
	read -ra words <<<"${ENVS[$i]} ${!extra-}"
	envs=()
	for w in "${words[@]}"; do
		envs+=("$(expand_vars "$w")")
	done

	log="$LOG_DIR/$name.log"
	pidfile="$RUN_DIR/$name.pid"
	[[ -f $log ]] && mv -f "$log" "$log.prev"
	rm -f "$pidfile"
	{
		echo "# $(date -Is) starting $bin"
		printf '#   %s\n' "${envs[@]}" |
			sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#; s#^(\#   ([A-Za-z0-9_]*(SECRET|PASSWORD|PRIVATE_KEY)[A-Za-z0-9_]*|[A-Za-z0-9_]*_TOKEN)=).+#\1***#'
	} >"$log"
	# Own session (Ctrl-C in this terminal reaches only this script), no inherited fds beyond
	# 0-2; the process writes its own pid file, then execs the binary. UPSH_* lets down.sh
	# tell our processes from a recycled pid.
	# shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
	UPSH_SERVICE="$name" UPSH_ROOT="$ROOT" setsid bash -c '
		for fd in /proc/$$/fd/*; do
			fd=${fd##*/}
			[ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
		done
		echo $$ >"$1"
		shift
		exec "$@"' up-launch "$pidfile" env "${envs[@]}" "$bin" >>"$log" 2>&1 </dev/null &
	for ((n = 0; n < 50; n++)); do
		[[ -s $pidfile ]] && break
		sleep 0.1
	done
	pid="$(cat "$pidfile" 2>/dev/null || true)"
	[[ -n $pid ]] || fail "$name: did not start"
	STARTED+=("$name")
	STARTED_PIDS+=("$pid")
	say "started $name (pid $pid, log .local/logs/$name.log)"

	# wait until ready (the whole start-up shares one deadline)
	until is_ready "$ready"; do
		kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up"
		((SECONDS < deadline)) || fail "$name not ready ($ready) within ${TIMEOUT}s"
		sleep 0.5
	done
	[[ $ready == - ]] || say "$name is ready ($ready)"
done

((${#STARTED[@]})) || {
	say "ERROR: no service binary found in $BIN_DIR; run 'make build' first"
	exit 1
}

cat <<EOF

Parley is up ($(IFS=,; echo "${STARTED[*]}")).
  Gateway:    $GATEWAY_URL   (ready: $GATEWAY_URL/readyz)
  Dev token:  curl -s -XPOST localhost:8080/v1/auth/dev-token -H 'content-type: application/json' -d '{"user_id":"alice"}'
  Logs:       .local/logs/<svc>.log
  Postgres:   $PARLEY_DB_URL
  Redis:      $PARLEY_REDIS_URL
  S3:         $PARLEY_S3_ENDPOINT   (bucket $PARLEY_S3_BUCKET)
EOF

if [[ $DETACH == yes ]]; then
	echo "  Stop with:  make down   (or scripts/down.sh)"
	exit 0
fi
echo "  Stop with:  Ctrl-C"

trap 'echo; say "stopping"; stop_started; exit 0' INT TERM
while :; do
	for i in "${!STARTED[@]}"; do
		if ! kill -0 "${STARTED_PIDS[$i]}" 2>/dev/null; then
			fail "${STARTED[$i]} (pid ${STARTED_PIDS[$i]}) exited"
		fi
	done
	sleep 1 &
	wait $! || true
done
