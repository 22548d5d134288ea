#!/usr/bin/env bash
# Postgres, Redis and an S3-compatible object store for Parley development and tests.
#
#   scripts/deps.sh [start]   ensure all three run and accept connections (default)
#   scripts/deps.sh stop      stop the PRIVATE instances of this checkout (never a system server)
#   scripts/deps.sh status    show what runs
#   scripts/deps.sh clean     stop the private instances and delete their data
#
# Postgres: PARLEY_PG_URL (an admin URL whose database is `postgres`) when set; otherwise a
#   private cluster in .local/pg on 127.0.0.1:${PARLEY_PG_PORT:-55432}, run as the `postgres`
#   OS user when we are root. If that user cannot traverse the checkout (e.g. it lives under
#   /root), the data dir is /tmp/parley-<uid>-<hash>/pg and .local/pg is a symlink to it.
# Redis: PARLEY_REDIS_URL when set; otherwise a private redis-server on
#   127.0.0.1:${PARLEY_REDIS_PORT:-56379} with its files in .local/redis.
# S3: PARLEY_S3_ENDPOINT when set (it must answer HTTP; the bucket PARLEY_S3_BUCKET, default
#   `parley`, must exist there; PARLEY_S3_REGION and PARLEY_S3_ACCESS_KEY_ID/_SECRET_ACCESS_KEY
#   are passed through, dev defaults otherwise); otherwise a private moto_server (PyPI
#   `moto[s3]`, in memory: nothing survives a stop) on 127.0.0.1:${PARLEY_S3_PORT:-59000},
#   pid and log in .local/s3, with the bucket `parley` created on every start. moto runs from
#   a Python venv shared by every checkout: ${XDG_CACHE_HOME:-~/.cache}/parley/s3-venv-moto-<version>
#   (PARLEY_S3_VENV overrides; created with `python3 -m venv`, pip log in .local/s3-pip.log).
#   moto accepts any credentials; the dev ones are parley-dev / parley-dev-secret.
# Missing binaries are installed with apt-get (postgresql, redis-server, python3-venv, curl).
# The database `parley` is created when missing. The resulting settings go to .local/deps.env
# as `export NAME=value` lines and are printed on stdout (progress goes to stderr):
#   PARLEY_PG_URL, PARLEY_REDIS_URL, PARLEY_S3_ENDPOINT, PARLEY_S3_REGION, PARLEY_S3_BUCKET,
#   PARLEY_S3_ACCESS_KEY_ID, PARLEY_S3_SECRET_ACCESS_KEY.
# The system servers on 5432/6379 are never used unless you point the URLs at them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
ENV_FILE="$LOCAL/deps.env"
PG_LINK="$LOCAL/pg"
REDIS_DIR="$LOCAL/redis"
PG_PORT="${PARLEY_PG_PORT:-55432}"
REDIS_PORT="${PARLEY_REDIS_PORT:-56379}"
S3_DIR="$LOCAL/s3"
S3_PORT="${PARLEY_S3_PORT:-59000}"
MOTO_VERSION=5.2.5
# What the venv holds; a venv built from other requirements is rebuilt.
S3_REQUIREMENTS=("moto[s3]==$MOTO_VERSION" flask flask-cors)
S3_VENV="${PARLEY_S3_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/parley/s3-venv-moto-$MOTO_VERSION}"
DB_NAME=parley
CMD="${1:-start}"

log() { printf 'deps: %s\n' "$*" >&2; }
die() {
	printf 'deps: ERROR: %s\n' "$*" >&2
	exit 1
}

run_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

# Run a command as the OS user that owns the private cluster (postgres refuses root).
as_pg() {
	if ((EUID == 0)); then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
	mkdir -p "$LOCAL"
	local aptlog="$LOCAL/apt.log"
	log "installing $* with apt-get (log: $aptlog)"
	export DEBIAN_FRONTEND=noninteractive
	if ! run_root apt-get install -y "$@" >"$aptlog" 2>&1 9>&-; then
		log "apt-get install failed; running apt-get update and retrying"
		run_root apt-get update >>"$aptlog" 2>&1 9>&- || true
		if ! run_root apt-get install -y "$@" >>"$aptlog" 2>&1 9>&-; then
			tail -n 30 "$aptlog" >&2
			die "apt-get install $* failed (see $aptlog)"
		fi
	fi
}

# ---------------------------------------------------------------- Postgres helpers

# Directory with initdb/pg_ctl/postgres for major version $1, or the newest installed.
pg_bindir() {
	local want="${1:-}" d
	if [[ -n ${PARLEY_PG_BINDIR:-} ]]; then
		echo "$PARLEY_PG_BINDIR"
		return 0
	fi
	local -a dirs=()
	if [[ -n $want ]]; then
		dirs=("/usr/lib/postgresql/$want/bin")
	else
		mapfile -t dirs < <(shopt -s nullglob; printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
	fi
	for d in "${dirs[@]}"; do
		[[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && {
			echo "$d"
			return 0
		}
	done
	return 1
}

pg_client() { # $1 = psql | pg_isready
	local b
	if b="$(pg_bindir 2>/dev/null)" && [[ -x $b/$1 ]]; then
		echo "$b/$1"
	elif command -v "$1" >/dev/null 2>&1; then
		command -v "$1"
	else
		return 1
	fi
}

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

short_hash() { printf '%s' "$1" | sha256sum | cut -c1-10; }

# Resolve (and on start, create) the real data directory; sets PG_DATA.
pg_resolve_datadir() {
	local create="$1"
	PG_DATA=""
	if [[ -L $PG_LINK ]]; then
		PG_DATA="$(readlink -- "$PG_LINK")"
		if [[ $create == yes && ! -d $PG_DATA ]]; then # e.g. /tmp was emptied by a reboot
			mkdir -p "$PG_DATA"
			chmod 755 "$(dirname "$PG_DATA")"
		fi
	elif [[ -d $PG_LINK ]]; then
		PG_DATA="$PG_LINK"
	elif [[ $create == yes ]]; then
		if ((EUID != 0)) || as_pg test -x "$LOCAL" 2>/dev/null; then
			PG_DATA="$PG_LINK"
			mkdir -p "$PG_DATA"
		else
			local base
			base="/tmp/parley-$(id -u)-$(short_hash "$ROOT")"
			log "user postgres cannot traverse $LOCAL; data dir goes to $base/pg (symlinked from .local/pg)"
			mkdir -p "$base/pg"
			[[ -O $base ]] || die "$base exists but is not owned by $(id -un)"
			chmod 755 "$base"
			ln -sfn "$base/pg" "$PG_LINK"
			PG_DATA="$base/pg"
		fi
	fi
	if [[ $create == yes ]]; then
		if ((EUID == 0)); then
			chown postgres:postgres "$PG_DATA"
			as_pg test -w "$PG_DATA" ||
				die "user postgres cannot reach $PG_DATA (checkout moved?); run 'scripts/deps.sh clean' and retry"
		fi
		chmod 700 "$PG_DATA"
	fi
}

pg_is_ours_running() { # our postmaster runs (any port)
	[[ -n ${PG_DATA:-} && -f $PG_DATA/postmaster.pid && -n ${PG_BIN:-} ]] &&
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# Writes parley.conf (included by postgresql.conf); true when its content changed.
pg_write_conf() {
	local sock="$PG_DATA" conf="$PG_DATA/parley.conf"
	# A Unix socket path must stay below ~107 bytes; TCP is all we use anyway.
	((${#sock} > 90)) && sock=""
	# Durable, as in production: an acknowledged message survives a power cut. The test
	# suite's only opt-out is per test database (synchronous_commit off; see `make test`
	# and PARLEY_TEST_UNSAFE_ASYNC_COMMIT): the cluster itself never runs with fsync off.
	cat >"$conf.new" <<EOF
# Written by scripts/deps.sh on every start: private dev/test instance, durable settings.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${sock//\'/\'\'}'
max_connections = 500
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
	((EUID == 0)) && chown postgres:postgres "$conf.new"
	grep -q "^include_if_exists = 'parley.conf'" "$PG_DATA/postgresql.conf" ||
		printf "\ninclude_if_exists = 'parley.conf'\n" >>"$PG_DATA/postgresql.conf"
	if cmp -s "$conf.new" "$conf"; then
		rm -f "$conf.new"
		return 1
	fi
	mv -f "$conf.new" "$conf"
}

pg_wait_ready() { # $1 = conninfo/URL, $2 = what
	local isready i
	isready="$(pg_client pg_isready)" || die "pg_isready not found"
	for ((i = 0; i < 60; i++)); do
		"$isready" -q -t 2 -d "$1" && return 0
		sleep 0.5
	done
	die "$2 does not accept connections ($1)"
}

ensure_private_pg() {
	local major=""
	pg_resolve_datadir no
	if [[ -n $PG_DATA && -f $PG_DATA/PG_VERSION ]]; then
		major="$(cat "$PG_DATA/PG_VERSION")"
		PG_BIN="$(pg_bindir "$major")" ||
			die "$PG_DATA was created by PostgreSQL $major, which is not installed; install postgresql-$major or run 'scripts/deps.sh clean'"
	else
		if ! PG_BIN="$(pg_bindir)"; then
			apt_install postgresql
			PG_BIN="$(pg_bindir)" || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin after installing postgresql"
		fi
	fi
	if ((EUID == 0)); then
		id postgres >/dev/null 2>&1 || die "OS user postgres is missing (the postgresql package creates it)"
	fi
	pg_resolve_datadir yes

	local url="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

	# Fast path: our cluster already runs on the wanted port.
	if pg_is_ours_running; then
		if [[ "$(sed -n 4p "$PG_DATA/postmaster.pid")" == "$PG_PORT" ]]; then
			# A cluster started by an older deps.sh ran with fsync off; fsync,
			# synchronous_commit and full_page_writes take effect on a reload.
			if pg_write_conf; then
				log "private PostgreSQL: settings changed (now durable); reloading"
				as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null
			fi
			pg_wait_ready "$url" "private PostgreSQL"
			PARLEY_PG_URL="$url"
			pg_undo_unsafe
			return 0
		fi
	fi
	if port_open "$PG_PORT"; then
		# Another checkout's private instance (e.g. a clean clone of this repository, as CI
		# makes): share it. Tests isolate themselves by database, so sharing is safe.
		if "$(pg_client psql)" "$url" -XAtqc 'select 1' >/dev/null 2>&1; then
			log "127.0.0.1:$PG_PORT already serves a PostgreSQL with trust auth (another checkout's?); using it"
			PARLEY_PG_URL="$url"
			return 0
		fi
		die "127.0.0.1:$PG_PORT is in use by another process (not a PostgreSQL we can use); set PARLEY_PG_PORT to a free port, or PARLEY_PG_URL to an existing server"
	fi
	if pg_is_ours_running; then
		log "private PostgreSQL runs on another port; restarting it on $PG_PORT"
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
	fi

	if [[ ! -f $PG_DATA/PG_VERSION ]]; then
		local locale=C
		locale -a 2>/dev/null | grep -qix 'c.utf-\?8' && locale=C.UTF-8
		log "initialising a private PostgreSQL $(basename "$(dirname "$PG_BIN")") cluster in $PG_DATA"
		find "$PG_DATA" -mindepth 1 -delete 2>/dev/null || true
		if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale="$locale" >"$LOCAL/pg-initdb.log" 2>&1; then
			tail -n 30 "$LOCAL/pg-initdb.log" >&2
			die "initdb failed (see $LOCAL/pg-initdb.log)"
		fi
	fi
	pg_write_conf || true

	log "starting private PostgreSQL on 127.0.0.1:$PG_PORT"
	if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/postgres.log" -w -t 60 start >/dev/null 2>&1 9>&-; then
		tail -n 30 "$PG_DATA/postgres.log" >&2 || true
		die "private PostgreSQL did not start (log: $PG_DATA/postgres.log)"
	fi
	pg_wait_ready "$url" "private PostgreSQL"
	PARLEY_PG_URL="$url"
	pg_undo_unsafe
}

# `make bench` turns durability off with ALTER SYSTEM for its fsync-off reference and
# restores it; should that run have been killed, the private cluster is made durable here.
pg_undo_unsafe() {
	local psql
	psql="$(pg_client psql)" || return 0
	if [[ "$("$psql" "$PARLEY_PG_URL" -XAtc "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf' AND name IN ('fsync', 'synchronous_commit', 'full_page_writes')" 2>/dev/null)" != 0 ]]; then
		log "private PostgreSQL: removing an unsafe setting left by an interrupted bench (ALTER SYSTEM RESET)"
		"$psql" "$PARLEY_PG_URL" -Xq -c 'ALTER SYSTEM RESET fsync' -c 'ALTER SYSTEM RESET synchronous_commit' \
			-c 'ALTER SYSTEM RESET full_page_writes' -c 'SELECT pg_reload_conf()' >/dev/null
	fi
}

ensure_database() {
	local psql
	psql="$(pg_client psql)" || die "psql not found"
	local q="SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'"
	if [[ "$("$psql" "$PARLEY_PG_URL" -XtAc "$q")" != 1 ]]; then
		log "creating database $DB_NAME"
		"$psql" "$PARLEY_PG_URL" -Xq -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null 2>&1 ||
			[[ "$("$psql" "$PARLEY_PG_URL" -XtAc "$q")" == 1 ]] || # lost a race: fine
			die "could not create database $DB_NAME via $PARLEY_PG_URL"
	fi
}

stop_private_pg() {
	pg_resolve_datadir no
	[[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]] || return 0
	local major
	major="$(cat "$PG_DATA/PG_VERSION" 2>/dev/null || true)"
	if PG_BIN="$(pg_bindir "$major")" && pg_is_ours_running; then
		log "stopping private PostgreSQL ($PG_DATA)"
		as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
	fi
}

# ---------------------------------------------------------------- Redis helpers

redis_pid() { # pid of our private redis-server, if it runs
	local pid
	pid="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null)" || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
		[[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] && echo "$pid"
}

redis_wait_ready() { # $1 = URL
	local i
	for ((i = 0; i < 40; i++)); do
		[[ "$(redis-cli -u "$1" ping 2>/dev/null)" == PONG ]] && return 0
		sleep 0.5
	done
	return 1
}

ensure_private_redis() {
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
		apt_install redis-server
	fi
	mkdir -p "$REDIS_DIR"
	local dir url="redis://127.0.0.1:$REDIS_PORT" pid
	dir="$(cd "$REDIS_DIR" && pwd -P)"

	if [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
		if [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --raw config get dir 2>/dev/null | sed -n 2p)" == "$dir" ]]; then
			PARLEY_REDIS_URL="$url"
			return 0
		fi
		# Another checkout's private Redis: share it (tests isolate themselves by key prefix).
		log "127.0.0.1:$REDIS_PORT already serves a Redis (another checkout's?); using it"
		PARLEY_REDIS_URL="$url"
		return 0
	fi
	port_open "$REDIS_PORT" &&
		die "127.0.0.1:$REDIS_PORT is in use by another process; set PARLEY_REDIS_PORT to a free port, or PARLEY_REDIS_URL to an existing server"
	if pid="$(redis_pid)"; then
		log "private Redis (pid $pid) does not answer on $REDIS_PORT; restarting it"
		stop_private_redis
	fi

	log "starting private Redis on 127.0.0.1:$REDIS_PORT"
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
		--dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
		--save '' --appendonly no >/dev/null 9>&- ||
		die "redis-server failed to start (log: $dir/redis.log)"
	if ! redis_wait_ready "$url"; then
		tail -n 20 "$dir/redis.log" >&2 || true
		die "private Redis does not accept connections on $url (log: $dir/redis.log)"
	fi
	PARLEY_REDIS_URL="$url"
}

stop_private_redis() {
	local pid i
	pid="$(redis_pid)" || {
		rm -f "$REDIS_DIR/redis.pid"
		return 0
	}
	log "stopping private Redis (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	rm -f "$REDIS_DIR/redis.pid"
}

# ---------------------------------------------------------------- S3 (moto) helpers

ensure_curl() { command -v curl >/dev/null 2>&1 || apt_install curl; }

http_code() { # URL -> the HTTP status it answers with, 000 when nothing answers
	curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" 2>/dev/null || true
}

http_answers() { [[ "$(http_code "$1")" != 000 ]]; }

# True when the server at $1 is a moto_server (its management API answers).
is_moto() { curl -sf --max-time 3 "$1/moto-api/data.json" 2>/dev/null | grep -q '^{'; }

moto_pid() { # pid of our private moto_server, if it runs
	local pid
	pid="$(cat "$S3_DIR/moto.pid" 2>/dev/null)" || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
		tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/moto_server$' && echo "$pid"
}

moto_port() { # port of the moto_server with pid $1 (from its command line)
	tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n '/^-p$/{n;p;q;}'
}

s3_venv_ok() {
	[[ -x $S3_VENV/bin/moto_server && "$(cat "$S3_VENV/.parley-requirements" 2>/dev/null)" == "${S3_REQUIREMENTS[*]}" ]] &&
		"$S3_VENV/bin/python" -c 'import moto, flask, flask_cors' >/dev/null 2>&1
}

# The venv with moto_server, shared by every checkout (a fresh clone finds it built).
ensure_s3_venv() {
	s3_venv_ok && return 0
	mkdir -p "$(dirname "$S3_VENV")"
	# One builder at a time across checkouts (our own lock, fd 9, is per checkout).
	exec 8>"$S3_VENV.lock"
	if command -v flock >/dev/null 2>&1; then
		flock -w 900 8 || die "another scripts/deps.sh holds $S3_VENV.lock"
	fi
	if ! s3_venv_ok; then
		local piplog="$LOCAL/s3-pip.log"
		# Replaced only when it is (the remains of) a venv: PARLEY_S3_VENV may point anywhere.
		if [[ -e $S3_VENV && ! -f $S3_VENV/pyvenv.cfg ]] && [[ -n "$(ls -A -- "$S3_VENV" 2>/dev/null)" ]]; then
			die "$S3_VENV exists and is not a Python venv; remove it or set PARLEY_S3_VENV elsewhere"
		fi
		log "creating a Python venv with ${S3_REQUIREMENTS[*]} in $S3_VENV (log: $piplog)"
		rm -rf -- "$S3_VENV"
		command -v python3 >/dev/null 2>&1 || apt_install python3-venv
		if ! python3 -m venv "$S3_VENV" >"$piplog" 2>&1 9>&- 8>&-; then
			# Debian's python3 needs python3-venv (ensurepip) for `-m venv`.
			rm -rf -- "$S3_VENV"
			apt_install python3-venv
			if ! python3 -m venv "$S3_VENV" >>"$piplog" 2>&1 9>&- 8>&-; then
				tail -n 30 "$piplog" >&2
				rm -rf -- "$S3_VENV"
				die "python3 -m venv $S3_VENV failed (see $piplog)"
			fi
		fi
		if ! "$S3_VENV/bin/python" -m pip install -q --disable-pip-version-check "${S3_REQUIREMENTS[@]}" >>"$piplog" 2>&1 9>&- 8>&-; then
			tail -n 30 "$piplog" >&2
			rm -rf -- "$S3_VENV"
			die "pip install ${S3_REQUIREMENTS[*]} failed (see $piplog)"
		fi
		printf '%s\n' "${S3_REQUIREMENTS[*]}" >"$S3_VENV/.parley-requirements"
		s3_venv_ok || die "$S3_VENV: moto_server is not usable after pip install (see $piplog)"
	fi
	exec 8>&-
}

ensure_private_s3() {
	ensure_curl
	mkdir -p "$S3_DIR"
	local url="http://127.0.0.1:$S3_PORT" pid="" i started=no

	if pid="$(moto_pid)" && [[ "$(moto_port "$pid")" == "$S3_PORT" ]]; then
		for ((i = 0; i < 20; i++)); do
			http_answers "$url/" && break
			sleep 0.5
		done
		if ((i == 20)); then
			log "private moto (pid $pid) does not answer on $S3_PORT; restarting it"
			stop_private_s3
		fi
	fi
	if pid="$(moto_pid)" && [[ "$(moto_port "$pid")" == "$S3_PORT" ]]; then
		: # ours, answering: reuse it
	elif http_answers "$url/" && is_moto "$url"; then
		# Another checkout's private moto: share it (tests isolate themselves by key prefix).
		log "127.0.0.1:$S3_PORT already serves a moto S3 (another checkout's?); using it"
	else
		port_open "$S3_PORT" &&
			die "127.0.0.1:$S3_PORT is in use by another process; set PARLEY_S3_PORT to a free port, or PARLEY_S3_ENDPOINT to an existing server"
		ensure_s3_venv
		if pid="$(moto_pid)"; then
			log "private moto runs on another port (pid $pid); restarting it on $S3_PORT"
			stop_private_s3
		fi
		log "starting private S3 (moto $MOTO_VERSION) on 127.0.0.1:$S3_PORT"
		[[ -f $S3_DIR/moto.log ]] && mv -f "$S3_DIR/moto.log" "$S3_DIR/moto.log.prev"
		rm -f "$S3_DIR/moto.pid"
		# Own session (a Ctrl-C in this terminal does not reach it), no inherited fds beyond
		# 0-2 (not our locks, nor a caller's pipe); the shell writes its pid and execs moto_server.
		# shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
		setsid bash -c '
			for fd in /proc/$$/fd/*; do
				fd=${fd##*/}
				[ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
			done
			echo $$ >"$1"
			shift
			exec "$@"' moto-launch "$S3_DIR/moto.pid" \
			"$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$S3_DIR/moto.log" 2>&1 </dev/null 8>&- 9>&- &
		started=yes
		for ((i = 0; i < 120; i++)); do
			if http_answers "$url/"; then
				break
			fi
			if ((i > 10)) && ! moto_pid >/dev/null; then
				tail -n 20 "$S3_DIR/moto.log" >&2 || true
				die "moto_server exited during start-up (log: $S3_DIR/moto.log)"
			fi
			sleep 0.25
		done
		if ! http_answers "$url/"; then
			tail -n 20 "$S3_DIR/moto.log" >&2 || true
			die "private S3 does not answer on $url (log: $S3_DIR/moto.log)"
		fi
	fi

	# moto keeps everything in memory: the bucket is (re)created after every start.
	if [[ "$(http_code "$url/parley")" != 200 ]]; then
		[[ $started == yes ]] || log "creating bucket parley in the private S3"
		curl -sf -o /dev/null --max-time 10 -X PUT "$url/parley" ||
			[[ "$(http_code "$url/parley")" == 200 ]] || # lost a race: fine
			die "could not create bucket parley at $url"
	fi
	PARLEY_S3_ENDPOINT="$url"
	PARLEY_S3_REGION=us-east-1
	PARLEY_S3_BUCKET=parley
	PARLEY_S3_ACCESS_KEY_ID=parley-dev
	PARLEY_S3_SECRET_ACCESS_KEY=parley-dev-secret
}

stop_private_s3() {
	local pid i
	pid="$(moto_pid)" || {
		rm -f "$S3_DIR/moto.pid"
		return 0
	}
	log "stopping private S3 (moto, pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	rm -f "$S3_DIR/moto.pid"
}

# ---------------------------------------------------------------- main

mkdir -p "$LOCAL"
# Serialise concurrent runs. Every server started below gets `9>&-` so that it does not
# inherit (and hold) this lock for its whole life.
exec 9>"$LOCAL/.deps.lock"
if command -v flock >/dev/null 2>&1; then
	flock -w 180 9 || die "another scripts/deps.sh holds $LOCAL/.deps.lock"
fi

case "$CMD" in
start | up | "")
	# Build prerequisite: the Web Push encryption crate links OpenSSL.
	if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
		apt_install pkg-config libssl-dev
	fi
	if [[ -n ${PARLEY_PG_URL:-} ]]; then
		if ! pg_client psql >/dev/null || ! pg_client pg_isready >/dev/null; then
			apt_install postgresql-client
		fi
		PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}" pg_wait_ready "$PARLEY_PG_URL" "PostgreSQL from PARLEY_PG_URL"
	else
		ensure_private_pg
	fi
	ensure_database

	if [[ -n ${PARLEY_REDIS_URL:-} ]]; then
		command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
		redis_wait_ready "$PARLEY_REDIS_URL" || die "Redis from PARLEY_REDIS_URL does not answer PING ($PARLEY_REDIS_URL)"
	else
		ensure_private_redis
	fi

	if [[ -n ${PARLEY_S3_ENDPOINT:-} ]]; then
		ensure_curl
		for ((i = 0; i < 10; i++)); do
			http_answers "$PARLEY_S3_ENDPOINT" && break
			sleep 0.5
		done
		http_answers "$PARLEY_S3_ENDPOINT" || die "S3 endpoint from PARLEY_S3_ENDPOINT does not answer HTTP ($PARLEY_S3_ENDPOINT)"
		PARLEY_S3_REGION="${PARLEY_S3_REGION:-us-east-1}"
		PARLEY_S3_BUCKET="${PARLEY_S3_BUCKET:-parley}"
		PARLEY_S3_ACCESS_KEY_ID="${PARLEY_S3_ACCESS_KEY_ID:-parley-dev}"
		PARLEY_S3_SECRET_ACCESS_KEY="${PARLEY_S3_SECRET_ACCESS_KEY:-parley-dev-secret}"
	else
		ensure_private_s3
	fi

	tmp="$ENV_FILE.tmp.$$"
	{
		echo "# Written by scripts/deps.sh; source it: . .local/deps.env"
		printf 'export PARLEY_PG_URL=%q\n' "$PARLEY_PG_URL"
		printf 'export PARLEY_REDIS_URL=%q\n' "$PARLEY_REDIS_URL"
		for v in PARLEY_S3_ENDPOINT PARLEY_S3_REGION PARLEY_S3_BUCKET PARLEY_S3_ACCESS_KEY_ID PARLEY_S3_SECRET_ACCESS_KEY; do
			printf 'export %s=%q\n' "$v" "${!v}"
		done
	} >"$tmp"
	mv -f "$tmp" "$ENV_FILE"
	grep '^export ' "$ENV_FILE"
	;;
stop)
	stop_private_pg
	stop_private_redis
	stop_private_s3
	;;
status)
	pg_resolve_datadir no
	PG_BIN="$(pg_bindir "$(cat "${PG_DATA:-/nonexistent}/PG_VERSION" 2>/dev/null || true)" 2>/dev/null || true)"
	if pg_is_ours_running; then
		echo "postgres: running (data $PG_DATA, port $(sed -n 4p "$PG_DATA/postmaster.pid"))"
	else
		echo "postgres: private instance not running${PG_DATA:+ (data $PG_DATA)}"
	fi
	if pid="$(redis_pid)"; then
		echo "redis: running (pid $pid, dir $REDIS_DIR)"
	else
		echo "redis: private instance not running"
	fi
	if pid="$(moto_pid)"; then
		echo "s3: running (moto pid $pid, port $(moto_port "$pid"), dir $S3_DIR, venv $S3_VENV)"
	else
		echo "s3: private instance not running (venv $S3_VENV$(s3_venv_ok || echo ', not built'))"
	fi
	[[ -f $ENV_FILE ]] && grep '^export ' "$ENV_FILE" || true
	;;
clean)
	stop_private_pg
	stop_private_redis
	stop_private_s3
	pg_resolve_datadir no
	if [[ -L $PG_LINK ]]; then
		target="$(readlink -- "$PG_LINK")"
		case "$target" in
		/tmp/parley-*/pg) rm -rf -- "$target" && rmdir -- "$(dirname "$target")" 2>/dev/null || true ;;
		esac
	fi
	rm -rf -- "$PG_LINK" "$REDIS_DIR" "$S3_DIR" "$LOCAL/s3-pip.log" "$ENV_FILE"
	log "removed private database data (the moto venv $S3_VENV is kept: it is shared by every checkout)"
	;;
*)
	die "usage: scripts/deps.sh [start|stop|status|clean]"
	;;
esac
