#!/usr/bin/env bash
# Benchmarks of the whole suite (used by `make bench`); writes bench/RESULTS.md and
# bench/latency.png, raw data in bench/raw/.
#
# Builds release binaries, starts the stack like `make up` (scripts/up.sh, release profile,
# send rate limit raised, private Postgres/Redis/S3 from scripts/deps.sh), then runs:
#   1 ramp      max sustained send throughput through the gateway with p99 < 50 ms
#   2 fixed     end-to-end latency at a fixed moderate rate
#   3 fanout    one channel with BENCH_FANOUT_MEMBERS connected members
#   4 idle      BENCH_IDLE idle WebSocket connections: gateway RSS per connection
#   5 history   before= pages at random positions of a BENCH_HISTORY_ROWS channel, keyset vs OFFSET
#   6 ceiling   pgbench running the SQL of one send transaction at scenario 1's concurrency
#   7 hot       one channel whose BENCH_HOT_MEMBERS members all send and all receive (ramp)
#   8 abuse     one hostile account: gateway RSS while one connection sends to BENCH_ABUSE_BOGUS
#               made-up channel ids, and a calm client's ping p99 beside a frame flood; run
#               against the bench gateway (per-connection limits raised: the worst case) and
#               against a second gateway with the production defaults (port 8090)
#   9 search    GET /v1/search p50/p99 by query class (common word, rare word, two words,
#               substring, typo, one channel) for a user in BENCH_SEARCH_USER_CHANNELS of
#               BENCH_SEARCH_CHANNELS channels holding BENCH_SEARCH_ROWS messages (seeded with
#               SQL, kept for later runs), at concurrency 1 and 4; EXPLAIN of each class's SQL
# Postgres runs with its durable settings (fsync, synchronous_commit, full_page_writes on:
# scripts/deps.sh). With BENCH_REFERENCE="1 6" (the default) those scenarios run again with
# fsync, synchronous_commit and full_page_writes off (a CPU-bound reference, each against
# its own ceiling); the durable settings are restored afterwards, also on error/interrupt.
# Stops the services it started (scripts/down.sh); the private databases keep running.
# Sizes are environment variables (BENCH_*, below); BENCH_ONLY="1 2 6" runs a subset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/parley/target}"
OUT="${BENCH_OUT:-$ROOT/bench}"
RAW="$OUT/raw"
BIN="$CARGO_TARGET_DIR/release"
LOADGEN="$BIN/parley-loadgen"

# ---- sizes (defaults fit a 2-core machine in ~10 minutes)
: "${BENCH_ONLY:=1 2 3 4 5 6 7 8 9}"
: "${BENCH_CLIENTS:=200}"            # scenario 1/2: clients (one WebSocket each)
: "${BENCH_CHANNELS:=100}"           # … channels
: "${BENCH_MEMBERS:=2}"              # … members per channel (all send, all receive)
: "${BENCH_RATES:=100,300,500,1000,1500,2000,2500,3000,3500,4000,4500,5000,5500,6000,6500,7000,7500,8000,9000,10000}"
: "${BENCH_STEP_SECS:=8}"            # seconds per ramp step
: "${BENCH_P99_MS:=50}"
: "${BENCH_FIXED_RATE:=1000}"        # scenario 2 (the issue's moderate rate)
: "${BENCH_FIXED_SECS:=15}"
: "${BENCH_FANOUT_MEMBERS:=1000}"    # scenario 3 (messaging's limits.max_members is raised to it)
# The load generator's users act far beyond the product's per-user limits: the limiter
# stays in the send path (a Redis call per send, as in production) with a one-second window
# that never refuses; channel creations, member additions and the per-connection frame
# rate are switched off or raised, and so is the search limit (scenario 9 searches far
# more than 30 times a minute as one user).
BENCH_GATEWAY_ENV="PARLEY__RATE__MESSAGES__N=1000000000 PARLEY__RATE__MESSAGES__WINDOW_SECS=1 PARLEY__RATE__CHANNEL_CREATIONS__N=0 PARLEY__RATE__JOINS__N=0 PARLEY__RATE__SEARCHES__N=0 PARLEY__WS__FRAMES_PER_SEC=1000000 PARLEY__WS__FRAMES_BURST=1000000"
: "${BENCH_FANOUT_RATE:=5}"
: "${BENCH_FANOUT_MESSAGES:=20}"
: "${BENCH_IDLE:=10000}"             # scenario 4
: "${BENCH_IDLE_USERS:=1000}"
: "${BENCH_HISTORY_ROWS:=1000000}"   # scenario 5
: "${BENCH_HISTORY_REQUESTS:=2000}"
: "${BENCH_PGBENCH_SECS:=15}"        # scenario 6 (and 5's SQL runs, 10 s each)
: "${BENCH_PG_CLIENTS:=}"            # default: messaging's database.max_connections (20)
: "${BENCH_HOT_MEMBERS:=16}"         # scenario 7: members of the one channel (all send)
: "${BENCH_HOT_RATES:=1000,2000,3000,4000,5000,6000}"
: "${BENCH_REFERENCE=1 6}"           # scenarios repeated with fsync off ("" = none)
: "${BENCH_ABUSE_BOGUS:=20000}"      # scenario 8
: "${BENCH_ABUSE_SECS:=10}"
: "${BENCH_SEARCH_ROWS:=1000000}"       # scenario 9: messages (seeded once, kept for later runs)
: "${BENCH_SEARCH_CHANNELS:=1000}"      # … group channels they are spread over
: "${BENCH_SEARCH_USER_CHANNELS:=100}"  # … of which the searching user is a member
: "${BENCH_SEARCH_REQUESTS:=2000}"      # … requests per run
: "${BENCH_SEARCH_CONCURRENCY:=1,4}"    # … one run per value
: "${BENCH_SEARCH_RUN_SECS:=600}"       # … a run makes no new request after this (slow server)
: "${BENCH_SEARCH_INDEX_WAIT:=600}"     # … seconds to wait for messaging's search indexes and words
: "${BENCH_SEARCH_RESEED:=}"            # … 1: seed again even when a seed of these sizes exists
export BENCH_HOT_MEMBERS BENCH_HOT_RATES BENCH_REFERENCE BENCH_ABUSE_BOGUS BENCH_ABUSE_SECS \
	BENCH_SEARCH_ROWS BENCH_SEARCH_CHANNELS BENCH_SEARCH_USER_CHANNELS BENCH_SEARCH_REQUESTS \
	BENCH_SEARCH_CONCURRENCY BENCH_SEARCH_RUN_SECS BENCH_SEARCH_INDEX_WAIT BENCH_SEARCH_RESEED
export BENCH_ONLY BENCH_CLIENTS BENCH_CHANNELS BENCH_MEMBERS BENCH_RATES BENCH_STEP_SECS \
	BENCH_P99_MS BENCH_FIXED_RATE BENCH_FIXED_SECS BENCH_FANOUT_MEMBERS BENCH_FANOUT_RATE \
	BENCH_FANOUT_MESSAGES BENCH_IDLE BENCH_IDLE_USERS BENCH_HISTORY_ROWS \
	BENCH_HISTORY_REQUESTS BENCH_PGBENCH_SECS

say() { printf '\nbench: %s\n' "$*" >&2; }
want() { [[ " $BENCH_ONLY " == *" $1 "* ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.log "$RAW"/*.txt "$RAW"/*.tsv
env | grep "^BENCH_" | sort >"$RAW/env.txt"   # the sizes of this run, for the report

# ---- build
say "building release binaries"
cargo build --release --workspace --bins

# ---- deps, limits
"$ROOT/scripts/deps.sh" >/dev/null
# shellcheck disable=SC1091
. "$ROOT/.local/deps.env"
pg_url_db() { # URL DB
	local url="$1" rest
	rest="${url#*://}"
	printf '%s://%s/%s\n' "${url%%://*}" "${rest%%/*}" "$2"
}
PG_DB_URL="$(pg_url_db "$PARLEY_PG_URL" parley)"
PGBENCH="$(command -v pgbench || true)"
if [[ -z $PGBENCH ]]; then
	PGBENCH="$(find /usr/lib/postgresql/*/bin -name pgbench 2>/dev/null | sort -V | tail -n1 || true)"
fi
[[ -n $PGBENCH ]] || {
	echo "bench: pgbench not found (apt-get install postgresql-contrib)" >&2
	exit 1
}
PSQL="$(command -v psql)"
# 10,000 connections: the gateway (started below, inherits it) and the load generator
# each hold one descriptor per connection.
want_fds=$((BENCH_IDLE + 2048))
if (($(ulimit -n) < want_fds)); then
	ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

# ---- start the stack (release), leave nothing running
STARTED=no
DURABILITY_OFF=no
durable_again() { # undo the reference's ALTER SYSTEM: the cluster is durable again
	"$PSQL" -q "$PARLEY_PG_URL" -c 'ALTER SYSTEM RESET fsync' -c 'ALTER SYSTEM RESET synchronous_commit' \
		-c 'ALTER SYSTEM RESET full_page_writes' -c 'SELECT pg_reload_conf()' >/dev/null &&
		DURABILITY_OFF=no
}
cleanup() {
	if [[ $DURABILITY_OFF == yes ]]; then
		say "restoring Postgres's durable settings"
		durable_again || say "WARNING: could not restore fsync/synchronous_commit/full_page_writes (ALTER SYSTEM RESET them)"
	fi
	if [[ -n ${EDGE_PID:-} ]]; then
		kill "$EDGE_PID" 2>/dev/null || true
	fi
	if [[ $STARTED == yes ]]; then
		say "stopping the services"
		"$ROOT/scripts/down.sh" >&2 || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting the suite (release)"
PARLEY_PROFILE=release \
	PARLEY_UP_ENV_gateway="$BENCH_GATEWAY_ENV ${PARLEY_UP_ENV_gateway:-}" \
	PARLEY_UP_ENV_messaging="PARLEY__LIMITS__MAX_MEMBERS=$BENCH_FANOUT_MEMBERS ${PARLEY_UP_ENV_messaging:-}" \
	"$ROOT/scripts/up.sh" --detach >"$RAW/up.log" 2>&1 || {
	cat "$RAW/up.log" >&2
	exit 1
}
STARTED=yes
GATEWAY_PID="$(cat "$ROOT/.local/run/gateway.pid")"
PG_CLIENTS="${BENCH_PG_CLIENTS:-$("$BIN/parley-messaging" --print-config 2>/dev/null | sed -n 's/^ *max_connections: *\([0-9]*\).*/\1/p' | head -n1)}"
PG_CLIENTS="${PG_CLIENTS:-20}"
export PG_CLIENTS

{
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')"
	echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
	echo "cores=$(nproc)"
	echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel=$(uname -r)"
	echo "postgres=$("$PSQL" "$PARLEY_PG_URL" -Atc 'show server_version')"
	echo "pg_settings=$("$PSQL" "$PARLEY_PG_URL" -Atc "select string_agg(name||'='||setting, ' ') from pg_settings where name in ('fsync','synchronous_commit','full_page_writes','shared_buffers','max_connections')")"
	echo "redis=$(redis-cli -u "$PARLEY_REDIS_URL" info server 2>/dev/null | sed -n 's/^redis_version://p' | tr -d '\r')"
	echo "rustc=$(rustc --version)"
	echo "pg_clients=$PG_CLIENTS"
} >"$RAW/machine.txt"

# ---- CPU accounting: clock ticks used per process, to give CPU time per message.
PG_POSTMASTER="$(head -n1 "$("$PSQL" "$PARLEY_PG_URL" -Atc 'show data_directory' 2>/dev/null)/postmaster.pid" 2>/dev/null || true)"
REDIS_PID="$(redis-cli -u "$PARLEY_REDIS_URL" info server 2>/dev/null | sed -n 's/^process_id://p' | tr -d '\r')"
ticks() { # PID [with_children]: utime+stime (+ cutime+cstime of exited children)
	awk -v c="${2:-0}" '{ t = $14 + $15; if (c) t += $16 + $17; print t }' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_snapshot() { # one "name ticks" line per process; postgres = postmaster + every backend
	local s pg=0 p
	for s in gateway messaging presence receipts notification; do
		echo "$s $(ticks "$(cat "$ROOT/.local/run/$s.pid" 2>/dev/null || echo 0)")"
	done
	if [[ -n $PG_POSTMASTER ]]; then
		pg="$(ticks "$PG_POSTMASTER" 1)"
		for p in $(pgrep -P "$PG_POSTMASTER"); do pg=$((pg + $(ticks "$p"))); done
	fi
	echo "postgres $pg"
	echo "redis $(ticks "${REDIS_PID:-0}")"
	echo "machine $(awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat)"
	echo "messages $("$PSQL" "$PG_DB_URL" -Atc 'select coalesce(sum(last_seq), 0) from messaging.channels' 2>/dev/null || echo 0)"
}
echo "clk_tck=$(getconf CLK_TCK)" >>"$RAW/machine.txt"

lg() { "$LOADGEN" --quiet "$@"; }
[[ -t 2 ]] && lg() { "$LOADGEN" "$@"; }

# ---- warm-up (connection pools, caches), not recorded
say "warm-up"
"$LOADGEN" --quiet traffic --clients 50 --channels 25 --members 2 --rate 200 --duration 3 --prefix warm >/dev/null

# Start every run from a comparable state: earlier runs leave dead outbox/counter tuples.
"$PSQL" -q "$PG_DB_URL" -c 'VACUUM ANALYZE' >/dev/null 2>&1 || say "VACUUM failed (continuing)"

# ---- 1: max sustained throughput ($1: file prefix, "" or "ref-")
scenario_ramp() {
	local tag="$1" svc watch=()
	for svc in gateway messaging presence receipts notification; do
		watch+=(--watch "$svc=$(cat "$ROOT/.local/run/$svc.pid")")
	done
	say "1/9 ${tag}ramp: max sustained throughput with p99 < ${BENCH_P99_MS} ms (load $(load))"
	echo "$(load)" >"$RAW/${tag}load-1.txt"
	cpu_snapshot >"$RAW/${tag}cpu-1-before.txt"
	# Background work in Postgres during the ramp (to line up with each step's ack p99 by
	# second): autovacuum and checkpoints are logged while it runs, then copied to raw/.
	local pg_log="$ROOT/.local/pg/postgres.log" pg_log_from=""
	[[ -f $pg_log ]] && pg_log_from="$(wc -c <"$pg_log")"
	"$PSQL" -q "$PARLEY_PG_URL" -c 'ALTER SYSTEM SET log_autovacuum_min_duration = 0' \
		-c 'ALTER SYSTEM SET log_checkpoints = on' -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 || true
	lg --json "$RAW/${tag}ramp.json" ramp --clients "$BENCH_CLIENTS" --channels "$BENCH_CHANNELS" \
		--members "$BENCH_MEMBERS" --duration "$BENCH_STEP_SECS" --drain 5 \
		--rates "$BENCH_RATES" --p99-ms "$BENCH_P99_MS" \
		"${watch[@]}" \
		${PG_POSTMASTER:+--watch postgres=$PG_POSTMASTER} ${REDIS_PID:+--watch redis=$REDIS_PID}
	cpu_snapshot >"$RAW/${tag}cpu-1-after.txt"
	"$PSQL" -q "$PARLEY_PG_URL" -c 'ALTER SYSTEM RESET log_autovacuum_min_duration' \
		-c 'ALTER SYSTEM RESET log_checkpoints' -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 || true
	if [[ -n $pg_log_from ]]; then
		tail -c +"$((pg_log_from + 1))" "$pg_log" >"$RAW/${tag}pg-ramp.log" || true
	fi
	echo "$(load)" >>"$RAW/${tag}load-1.txt"
}
want 1 && scenario_ramp ""

# ---- 2: fixed rate
if want 2; then
	say "2/9 fixed rate ${BENCH_FIXED_RATE} msg/s for ${BENCH_FIXED_SECS}s (load $(load))"
	echo "$(load)" >"$RAW/load-2.txt"
	lg --json "$RAW/fixed.json" traffic --clients "$BENCH_CLIENTS" --channels "$BENCH_CHANNELS" \
		--members "$BENCH_MEMBERS" --rate "$BENCH_FIXED_RATE" --duration "$BENCH_FIXED_SECS"
	echo "$(load)" >>"$RAW/load-2.txt"
fi

# ---- 3: fan-out
if want 3; then
	say "3/9 fan-out: 1 channel, ${BENCH_FANOUT_MEMBERS} connected members (load $(load))"
	echo "$(load)" >"$RAW/load-3.txt"
	lg --json "$RAW/fanout.json" traffic --clients "$BENCH_FANOUT_MEMBERS" --channels 1 \
		--members "$BENCH_FANOUT_MEMBERS" --senders 1 --rate "$BENCH_FANOUT_RATE" \
		--duration "$(awk -v n="$BENCH_FANOUT_MESSAGES" -v r="$BENCH_FANOUT_RATE" 'BEGIN{print n/r}')" \
		--drain 15 --prefix fo
	echo "$(load)" >>"$RAW/load-3.txt"
fi

# ---- 6: the database's ceiling (run before 4/5 so it sits next to 1 in time)
pgbench_db_url="$(pg_url_db "$PARLEY_PG_URL" parley_pgbench)"
scenario_ceiling() { # $1: file prefix, "" or "ref-"
	local tag="$1" script
	say "6/9 ${tag}ceiling: pgbench, one send transaction, ${PG_CLIENTS} clients, ${BENCH_CHANNELS} channels (load $(load))"
	"$PSQL" -q "$PARLEY_PG_URL" -c 'DROP DATABASE IF EXISTS parley_pgbench' -c 'CREATE DATABASE parley_pgbench'
	{
		echo 'CREATE SCHEMA messaging; SET search_path = messaging;'
		cat services/messaging/migrations/*.sql
		# channels n = 1..C with uuid 00000000-0000-4000-8000-<n>, members u<n>-0, u<n>-1
		cat <<-SQL
			INSERT INTO channels (id, kind, name, created_by, member_count)
			  SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'group', 'c' || n, 'u' || n || '-0', 2
			  FROM generate_series(1, $BENCH_CHANNELS) n;
			INSERT INTO members (channel_id, user_id, role)
			  SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'u' || n || '-' || m, CASE m WHEN 0 THEN 'owner' ELSE 'member' END
			  FROM generate_series(1, $BENCH_CHANNELS) n, generate_series(0, 1) m;
			ALTER DATABASE parley_pgbench SET search_path = messaging;
			ANALYZE;
		SQL
	} | "$PSQL" -q -v ON_ERROR_STOP=1 "$pgbench_db_url" >/dev/null
	# One message per transaction, two ways; the ceiling is the faster of the two.
	# send.sql: the statements of messaging's five-statement send transaction (batch::Writer,
	# the path a batch takes when its lane does not know the channel's counter) with a batch
	# of one: lock the channel, check membership + idempotency, one statement for counter +
	# message + outbox event, COMMIT, then the outbox DELETE on its own.
	# send-simple.sql: the classic single-row statements of one send (the previous
	# implementation), which Postgres runs slightly cheaper per message.
	# The channel's uuid and the user id are built from pgbench's integer variables.
	cat >"$RAW/send.sql" <<-'SQL'
		\set ch random(1, :channels)
		\set m random(0, 1)
		\set r random(1, 1000000000000)
		BEGIN;
		SELECT id AS lock_id, last_seq AS last_seq, members_version AS mv, now() AS at FROM channels WHERE id = ANY(ARRAY[('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid]) ORDER BY id FOR NO KEY UPDATE \gset
		SELECT r.i, m.user_id IS NOT NULL, e.id, e.seq, e.body, e.created_at, e.edited_at, e.deleted FROM unnest(ARRAY[('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid], ARRAY['u' || :ch || '-' || :m], ARRAY['pg-' || :client_id || '-' || :r]) WITH ORDINALITY AS r(channel_id, sender_id, client_msg_id, i) LEFT JOIN members m ON m.channel_id = r.channel_id AND m.user_id = r.sender_id LEFT JOIN messages e ON e.channel_id = r.channel_id AND e.sender_id = r.sender_id AND e.client_msg_id = r.client_msg_id ORDER BY r.i;
		WITH counters AS (UPDATE channels c SET last_seq = v.last_seq, last_activity_at = :at::timestamptz FROM unnest(ARRAY[('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid], ARRAY[:last_seq::int8 + 1]) AS v(id, last_seq) WHERE c.id = v.id), inserted AS (INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at) SELECT channel_id, seq, id, sender_id, client_msg_id, body, :at::timestamptz FROM unnest(ARRAY[('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid], ARRAY[:last_seq::int8 + 1], ARRAY[gen_random_uuid()], ARRAY['u' || :ch::text || '-' || :m::text], ARRAY['pg-' || :client_id::text || '-' || :r::text], ARRAY[repeat('x', 64)]) AS m(channel_id, seq, id, sender_id, client_msg_id, body)) INSERT INTO outbox (event_id, topics, payload) SELECT e.event_id, ARRAY[e.topic], e.payload FROM unnest(ARRAY[gen_random_uuid()], ARRAY[concat_ws(chr(58), 'messaging', 'channel', :ch::text)], ARRAY[decode(repeat('ab', 300), 'hex')]) WITH ORDINALITY AS e(event_id, topic, payload, i) ORDER BY e.i RETURNING id AS oid, event_id \gset
		COMMIT;
		DELETE FROM outbox WHERE id = ANY(ARRAY[:oid]::bigint[]);
	SQL
	cat >"$RAW/send-simple.sql" <<-'SQL'
		\set ch random(1, :channels)
		\set m random(0, 1)
		\set r random(1, 1000000000000)
		BEGIN;
		SELECT role FROM members WHERE channel_id = ('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid AND user_id = 'u' || :ch || '-' || :m;
		SELECT id, channel_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted FROM messages WHERE channel_id = ('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid AND sender_id = 'u' || :ch || '-' || :m AND client_msg_id = 'pg-' || :client_id || '-' || :r;
		UPDATE channels SET last_seq = last_seq + 1, last_activity_at = now() WHERE id = ('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid RETURNING last_seq AS seq, last_activity_at AS at \gset
		INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at) VALUES (('00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0'))::uuid, :seq, gen_random_uuid(), 'u' || :ch || '-' || :m, 'pg-' || :client_id || '-' || :r, repeat('x', 64), :at::timestamptz) ON CONFLICT (channel_id, sender_id, client_msg_id) DO NOTHING RETURNING id, channel_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted;
		INSERT INTO outbox (event_id, topics, payload) VALUES (gen_random_uuid(), ARRAY['channel' || ':' || '00000000-0000-4000-8000-' || lpad(:ch::text, 12, '0')], decode(repeat('ab', 300), 'hex')) RETURNING id AS oid \gset
		COMMIT;
		DELETE FROM outbox WHERE id = ANY(ARRAY[:oid]::bigint[]);
	SQL
	echo "$(load)" >"$RAW/${tag}load-6.txt"
	for script in send send-simple; do
		cpu_snapshot >"$RAW/${tag}cpu-6-$script-before.txt"
		(cd "$RAW" && "$PGBENCH" -n -M prepared -c "$PG_CLIENTS" -j 2 -T "$BENCH_PGBENCH_SECS" \
			-D channels="$BENCH_CHANNELS" -l --log-prefix="pgbench_$script" -f "$script.sql" "$pgbench_db_url") \
			| tee "$RAW/${tag}pgbench-$script.txt"
		cpu_snapshot >"$RAW/${tag}cpu-6-$script-after.txt"
		cat "$RAW"/pgbench_"$script".* >"$RAW/${tag}pgbench-$script.log" && rm -f "$RAW"/pgbench_"$script".*
	done
	echo "$(load)" >>"$RAW/${tag}load-6.txt"
	"$PSQL" -q "$PARLEY_PG_URL" -c 'DROP DATABASE IF EXISTS parley_pgbench'
}
want 6 && scenario_ceiling ""

# ---- 7: one hot channel, every member sending and receiving
if want 7; then
	say "7/9 hot channel: ${BENCH_HOT_MEMBERS} members all sending (load $(load))"
	echo "$(load)" >"$RAW/load-7.txt"
	lg --json "$RAW/hot.json" ramp --clients "$BENCH_HOT_MEMBERS" --channels 1 \
		--members "$BENCH_HOT_MEMBERS" --duration "$BENCH_STEP_SECS" --drain 5 \
		--rates "$BENCH_HOT_RATES" --p99-ms "$BENCH_P99_MS" --prefix hot
	echo "$(load)" >>"$RAW/load-7.txt"
fi

# ---- the fsync-off reference: the same ramp and ceiling with durability off (CPU-bound)
if [[ -n ${BENCH_REFERENCE// /} ]]; then
	say "reference: fsync, synchronous_commit and full_page_writes off for scenarios: $BENCH_REFERENCE"
	DURABILITY_OFF=yes
	"$PSQL" -q "$PARLEY_PG_URL" -c 'ALTER SYSTEM SET fsync = off' -c 'ALTER SYSTEM SET synchronous_commit = off' \
		-c 'ALTER SYSTEM SET full_page_writes = off' -c 'SELECT pg_reload_conf()' >/dev/null
	"$PSQL" "$PARLEY_PG_URL" -Atc "select string_agg(name||'='||setting, ' ') from pg_settings where name in ('fsync','synchronous_commit','full_page_writes')" >"$RAW/ref-pg-settings.txt"
	[[ " $BENCH_REFERENCE " == *" 1 "* ]] && scenario_ramp "ref-"
	[[ " $BENCH_REFERENCE " == *" 6 "* ]] && scenario_ceiling "ref-"
	durable_again
fi

# ---- 4: idle connections
if want 4; then
	say "4/9 idle: ${BENCH_IDLE} WebSocket connections (ulimit -n $(ulimit -n), load $(load))"
	echo "$(load)" >"$RAW/load-4.txt"
	lg --json "$RAW/idle.json" idle --connections "$BENCH_IDLE" --users "$BENCH_IDLE_USERS" \
		--hold 10 --gateway-pid "$GATEWAY_PID" || say "idle scenario reported failures (see above)"
	echo "$(load)" >>"$RAW/load-4.txt"
fi

# ---- 5: history
if want 5; then
	say "5/9 history: channel of ${BENCH_HISTORY_ROWS} messages (load $(load))"
	HUSER=bench-history
	HNAME="bench-history-$BENCH_HISTORY_ROWS"
	ch="$("$PSQL" -At "$PG_DB_URL" -c "SELECT id FROM messaging.channels WHERE name = '$HNAME' AND created_by = '$HUSER' AND last_seq = $BENCH_HISTORY_ROWS LIMIT 1")"
	if [[ -z $ch ]]; then
		token="$(curl -sf -XPOST localhost:8080/v1/auth/dev-token -d "{\"user_id\":\"$HUSER\"}" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
		ch="$(curl -sf -XPOST localhost:8080/v1/channels -H "Authorization: Bearer $token" \
			-d "{\"kind\":\"group\",\"name\":\"$HNAME-seeding\",\"members\":[]}" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')"
		say "seeding $BENCH_HISTORY_ROWS messages into $ch (reused by later runs)"
		"$PSQL" -q -v ON_ERROR_STOP=1 "$PG_DB_URL" <<-SQL
			SET search_path = messaging;
			INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at)
			  SELECT '$ch', s, gen_random_uuid(), '$HUSER', 'seed-' || s, 'history message ' || s || ' ' || repeat('x', 40),
			         now() - ($BENCH_HISTORY_ROWS - s) * interval '1 second'
			  FROM generate_series(1, $BENCH_HISTORY_ROWS) s;
			UPDATE channels SET last_seq = $BENCH_HISTORY_ROWS, name = '$HNAME' WHERE id = '$ch';
			VACUUM ANALYZE messages;
		SQL
	fi
	echo "$(load)" >"$RAW/load-5.txt"
	lg --json "$RAW/history.json" history --channel "$ch" --user "$HUSER" \
		--last-seq "$BENCH_HISTORY_ROWS" --requests "$BENCH_HISTORY_REQUESTS" --concurrency 8
	cols='id, channel_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted'
	cat >"$RAW/keyset.sql" <<-SQL
		\set pos random(2, $((BENCH_HISTORY_ROWS + 1)))
		SELECT $cols FROM messaging.messages WHERE channel_id = '$ch' AND seq < :pos ORDER BY seq DESC LIMIT 51;
	SQL
	cat >"$RAW/offset.sql" <<-SQL
		\set pos random(2, $((BENCH_HISTORY_ROWS + 1)))
		SELECT $cols FROM messaging.messages WHERE channel_id = '$ch' ORDER BY seq DESC OFFSET $((BENCH_HISTORY_ROWS + 1)) - :pos LIMIT 51;
	SQL
	for q in keyset offset; do
		(cd "$RAW" && "$PGBENCH" -n -M prepared -c 2 -j 2 -T 10 -l --log-prefix="pgbench_$q" \
			-f "$q.sql" "$PG_DB_URL") | tee "$RAW/pgbench-$q.txt"
		cat "$RAW"/pgbench_"$q".* >"$RAW/pgbench-$q.log" && rm -f "$RAW"/pgbench_"$q".*
	done
	"$PSQL" -At "$PG_DB_URL" -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $cols FROM messaging.messages WHERE channel_id = '$ch' AND seq < $((BENCH_HISTORY_ROWS / 2)) ORDER BY seq DESC LIMIT 51" >"$RAW/explain-keyset.txt"
	"$PSQL" -At "$PG_DB_URL" -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $cols FROM messaging.messages WHERE channel_id = '$ch' ORDER BY seq DESC OFFSET $((BENCH_HISTORY_ROWS / 2)) LIMIT 51" >"$RAW/explain-offset.txt"
	echo "$(load)" >>"$RAW/load-5.txt"
fi

# ---- 8: abuse
if want 8; then
	say "8/9 abuse: ${BENCH_ABUSE_BOGUS} made-up channel ids, a frame flood beside a calm client (load $(load))"
	echo "$(load)" >"$RAW/load-8.txt"
	lg --json "$RAW/abuse-open.json" abuse --bogus "$BENCH_ABUSE_BOGUS" --calm-secs "$BENCH_ABUSE_SECS" \
		--gateway-pid "$GATEWAY_PID" --prefix abuse-open || say "abuse scenario (limits raised) failed"
	# A second gateway as production runs it: default per-connection and per-user limits
	# (dev tokens on, for the load generator's users).
	EDGE_ENV=(PARLEY__HTTP__ADDR=127.0.0.1:8090 PARLEY__MESSAGING__URL=http://127.0.0.1:5051
		"PARLEY__REDIS__URL=$PARLEY_REDIS_URL" PARLEY__AUTH__DEV_TOKENS=true
		PARLEY__PRESENCE__URL=http://127.0.0.1:5052 PARLEY__RECEIPTS__URL=http://127.0.0.1:5053
		PARLEY__NOTIFICATION__URL=http://127.0.0.1:5054 PARLEY__NODE__ID=bench-edge)
	env "${EDGE_ENV[@]}" "$BIN/parley-gateway" >"$RAW/edge-gateway.log" 2>&1 &
	EDGE_PID=$!
	for _ in $(seq 1 60); do
		curl -sf http://127.0.0.1:8090/readyz >/dev/null && break
		sleep 0.5
	done
	lg --url http://127.0.0.1:8090 --json "$RAW/abuse-defaults.json" abuse --bogus "$BENCH_ABUSE_BOGUS" \
		--calm-secs "$BENCH_ABUSE_SECS" --gateway-pid "$EDGE_PID" --prefix abuse-def ||
		say "abuse scenario (defaults) failed"
	kill "$EDGE_PID" 2>/dev/null || true
	wait "$EDGE_PID" 2>/dev/null || true
	EDGE_PID=
	echo "$(load)" >>"$RAW/load-8.txt"
fi

# ---- 9: search
# The searching user, the marker of a complete seed (its channels are named "<marker> #<i>")
# and messaging's search settings (its effective configuration).
SEARCH_USER=bench-search
SEARCH_NAME="bench-search-$BENCH_SEARCH_ROWS-$BENCH_SEARCH_CHANNELS-$BENCH_SEARCH_USER_CHANNELS"
SEARCH_VOCAB=5000
messaging_setting() { # KEY DEFAULT: a value of `parley-messaging --print-config`
	local v
	v="$("$BIN/parley-messaging" --print-config 2>/dev/null | sed -n "s/^ *$1 *[:=] *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\} *\$/\1/p" | head -n1)"
	echo "${v:-$2}"
}
# The vocabulary: temporary table vocab(rank, word), rank 0 the most frequent. The same
# every time (seeding and the queries of later runs use it): ~100 common English chat words,
# then pronounceable made-up words (two syllables, three from rank 1,800 on, sometimes a
# final consonant), from md5 of their number; SEARCH_VOCAB words in all.
search_vocab_sql() {
	cat <<-SQL
		CREATE TEMP TABLE vocab AS
		WITH common AS (
		  SELECT w AS word, k FROM unnest(string_to_array('the i you to a and it is that of in for on we this my be have just so me not with but are can at do what will was all get if your know like ok yes no about they up now there out one going think good time here how see would let back today from need want when tomorrow thanks please did been some then meeting also should new could work sure really yeah lol maybe still right make them call send check look later done any after before soon great sorry thing people problem build deploy release review test fix bug issue update', ' ')) WITH ORDINALITY AS t(w, k)
		), syllables AS (
		  SELECT array_agg(o || v ORDER BY oi, vi) AS s
		  FROM unnest('{b,c,d,f,g,h,j,k,l,m,n,p,r,s,t,v,w,z,br,cr,dr,fr,gr,pr,tr,st,sl,sp,ch,sh,th,bl,cl,fl,gl,pl}'::text[]) WITH ORDINALITY AS a(o, oi),
		       unnest('{a,e,i,o,u}'::text[]) WITH ORDINALITY AS b(v, vi)
		), made_up AS (
		  SELECT 1000 + j AS k,
		         s[1 + x % 180] || s[1 + x / 180 % 180] || CASE WHEN j >= 1800 THEN s[1 + x / 32400 % 180] ELSE '' END
		         || (ARRAY['', '', '', 'n', 'r', 's', 't', 'l', 'm', 'nd', 'st', 'rk', 'ng', 'x'])[1 + j * 37 % 14] AS word
		  FROM syllables, generate_series(0, $((SEARCH_VOCAB + 1000))) j,
		       LATERAL (SELECT ('x' || left(md5('w' || j), 12))::bit(48)::bigint AS x) h
		)
		SELECT (row_number() OVER (ORDER BY k) - 1)::int AS rank, word
		FROM (SELECT word, min(k) AS k FROM (SELECT word, k FROM common UNION ALL SELECT word, k FROM made_up) u GROUP BY word) d
		ORDER BY k LIMIT $SEARCH_VOCAB;
		ANALYZE vocab;
	SQL
}
# The SQL messaging runs for a search's first page (services/messaging/src/store/search.rs;
# columns: store.rs MESSAGE_COLS), literals in place of its parameters; it needs
# search_path = messaging, as the service's connections have. A one-word query of 3 to
# trigram_max_chars characters first looks up the words of the messages that contain it or
# resemble it (search_words_sql, with pg_trgm.similarity_threshold set), then the
# messages match the query's words or any of those (search_sql QUERY CHANNELS WORD…; a
# CHANNELS literal like {id,id}).
sql_lit() { local s="${1//\'/\'\'}"; printf "'%s'" "$s"; }
search_widens() { # QUERY: whether messaging looks up similar words for it
	((${#1} >= 3 && ${#1} <= SEARCH_TRGM_MAX)) && [[ $1 != *[[:space:]]* ]]
}
search_words_sql() { # QUERY
	local w="${1,,}" like
	like="${w//\\/\\\\}"
	like="${like//%/\\%}"
	like="${like//_/\\_}"
	cat <<-SQL
		SELECT word FROM search_words
		         WHERE (word LIKE $(sql_lit "%$like%") OR word % $(sql_lit "$w")) AND word <> $(sql_lit "$w")
		         ORDER BY word <-> $(sql_lit "$w"), length(word), word
		         LIMIT $SEARCH_MAX_SIMILAR
	SQL
}
search_sql() { # QUERY CHANNELS [WORD…]
	local q="$1" chans="$2" w tsquery lexemes="" newest
	shift 2
	tsquery="websearch_to_tsquery('$SEARCH_CONFIG'::regconfig, $(sql_lit "$q"))"
	for w in "$@"; do # each a quoted lexeme ( ' and \ doubled), joined by |
		w="${w//\\/\\\\}"
		lexemes+="${lexemes:+ | }'${w//\'/\'\'}'"
	done
	[[ -z $lexemes ]] || tsquery="($tsquery || to_tsquery('$SEARCH_CONFIG'::regconfig, $(sql_lit "$lexemes")))"
	# messaging reads the channels' newest activity first and bounds the messages by it
	newest="$("$PSQL" -At "$PG_DB_URL" -c "SELECT max(last_activity_at) FROM messaging.channels WHERE id = ANY('$chans'::uuid[])")"
	cat <<-SQL
		SELECT m.id, m.channel_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.created_at, m.edited_at, m.deleted, m.system, m.attachments FROM messages m
		         WHERE m.channel_id = ANY('$chans'::uuid[]) AND NOT m.deleted AND m.system IS NULL
		           AND to_tsvector('$SEARCH_CONFIG'::regconfig, m.body) @@ $tsquery
		           AND (NULL::timestamptz IS NULL OR (m.created_at, m.id) < (NULL::timestamptz, NULL::uuid))
		           AND m.created_at <= '$newest'::timestamptz
		         ORDER BY m.created_at DESC, m.id DESC
		         LIMIT 21
	SQL
}
# Messaging's search structures, built and filled in the background after a start
# (services/messaging/src/search.rs): its two indexes, and the words of every message
# settled for search.words_settle_ms collected into search_words.
search_indexes_valid() { # how many of the two exist and are valid
	"$PSQL" -At "$PG_DB_URL" -c "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relname IN ('messages_fts_$SEARCH_CONFIG', 'messages_created_at') AND c.relnamespace = 'messaging'::regnamespace AND i.indisvalid"
}
search_words_behind() { # t while a settled message's words are not collected yet
	"$PSQL" -At "$PG_DB_URL" -c "SELECT EXISTS (SELECT 1 FROM messaging.messages m
		LEFT JOIN messaging.search_words_position p ON true
		WHERE m.created_at < now() - make_interval(secs => $SEARCH_SETTLE_MS / 1000.0)
		  AND (p.one IS NULL OR (m.created_at, m.id) > (p.created_at, p.id)))"
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
if want 9; then
	say "9/9 search: ${BENCH_SEARCH_ROWS} messages in ${BENCH_SEARCH_CHANNELS} channels, a user in ${BENCH_SEARCH_USER_CHANNELS} (load $(load))"
	((BENCH_SEARCH_USER_CHANNELS >= 1 && BENCH_SEARCH_USER_CHANNELS <= BENCH_SEARCH_CHANNELS && BENCH_SEARCH_ROWS >= BENCH_SEARCH_CHANNELS)) || {
		echo "bench: need 1 <= BENCH_SEARCH_USER_CHANNELS <= BENCH_SEARCH_CHANNELS <= BENCH_SEARCH_ROWS" >&2
		exit 1
	}
	SEARCH_CONFIG="$(messaging_setting text_search_config simple)"
	SEARCH_TRGM_MAX="$(messaging_setting trigram_max_chars 32)"
	SEARCH_TYPO="$(messaging_setting typo_similarity 0.3)"
	SEARCH_MAX_SIMILAR="$(messaging_setting max_similar_words 10)"
	SEARCH_SETTLE_MS="$(messaging_setting words_settle_ms 5000)"
	seed_file="$RAW/search-seed.txt"
	: >"$seed_file"
	# A complete seed of these sizes: its channels, their messages, and the user in exactly
	# its channels (channels, messages, the user's memberships in them, all of them).
	have="$("$PSQL" -At "$PG_DB_URL" -c "SELECT count(*) || ' ' || coalesce(sum(c.last_seq), 0) || ' ' || count(m.user_id) || ' '
		|| (SELECT count(*) FROM messaging.members WHERE user_id = '$SEARCH_USER')
		FROM messaging.channels c LEFT JOIN messaging.members m ON m.channel_id = c.id AND m.user_id = '$SEARCH_USER'
		WHERE c.name LIKE '$SEARCH_NAME #%' AND c.created_by LIKE 'bench-search-o%'")"
	if [[ -z $BENCH_SEARCH_RESEED && $have == "$BENCH_SEARCH_CHANNELS $BENCH_SEARCH_ROWS $BENCH_SEARCH_USER_CHANNELS $BENCH_SEARCH_USER_CHANNELS" ]]; then
		say "search: reusing the seeded $SEARCH_NAME"
		echo "seeded=reused" >>"$seed_file"
	else
		# Channel i (0-based) is owned by bench-search-o<i>; the user is a member of channels
		# 0..USER_CHANNELS-1. Message n (0-based) goes to channel n % CHANNELS as its seq
		# n / CHANNELS + 1 (gapless), at a time rising with n over the last 90 days; in the
		# user's channels every other message is the user's. A body is 3-25 words (short ones
		# likelier), word of rank r with probability ~ 1/(r+1) (Zipf), the first capitalised,
		# maybe a full stop, question or exclamation mark. Earlier seeds (other sizes, or
		# incomplete) are deleted first. One transaction; random() seeded, so the same sizes
		# give the same bodies. Messaging's words job reads messages in time order from where
		# it stopped, so it would never read these (older than what it has read): its
		# position is reset, holding its lock (store/search.rs, collect_words) so no batch in
		# flight moves it again, and it reads every message again from the first.
		say "search: seeding $SEARCH_NAME (earlier bench-search seeds are replaced; reused by later runs)"
		t0="$(date +%s.%N)"
		{
			echo "BEGIN;"
			echo "SELECT setseed(0.17);"
			echo "SET LOCAL work_mem = '256MB';"
			echo "DELETE FROM messaging.channels WHERE name LIKE 'bench-search-%' AND created_by LIKE 'bench-search-o%';"
			echo "SELECT pg_advisory_xact_lock(7150018);"
			echo "DELETE FROM messaging.search_words_position;"
			search_vocab_sql
			cat <<-SQL
				CREATE TEMP TABLE chans AS
				  SELECT i, gen_random_uuid() AS id, 'bench-search-o' || i AS owner, i < $BENCH_SEARCH_USER_CHANNELS AS mine
				  FROM generate_series(0, $BENCH_SEARCH_CHANNELS - 1) i;
				ANALYZE chans;
				INSERT INTO messaging.channels (id, kind, name, created_by, created_at, last_activity_at, member_count)
				  SELECT id, 'group', '$SEARCH_NAME #' || i, owner, now() - interval '91 days', now() - interval '91 days',
				         CASE WHEN mine THEN 2 ELSE 1 END
				  FROM chans;
				INSERT INTO messaging.members (channel_id, user_id, role, joined_at)
				  SELECT id, owner, 'owner', now() - interval '91 days' FROM chans
				  UNION ALL
				  SELECT id, '$SEARCH_USER', 'member', now() - interval '91 days' FROM chans WHERE mine;
				INSERT INTO messaging.messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at)
				  SELECT c.id, b.n / $BENCH_SEARCH_CHANNELS + 1, gen_random_uuid(),
				         CASE WHEN c.mine AND b.n / $BENCH_SEARCH_CHANNELS % 2 = 1 THEN '$SEARCH_USER' ELSE c.owner END,
				         'seed-' || b.n,
				         upper(left(b.body, 1)) || substr(b.body, 2) || (ARRAY['', '', '', '.', '?', '!'])[1 + floor(random() * 6)::int],
				         now() - interval '90 days' * (1 - b.n::float8 / $BENCH_SEARCH_ROWS)
				  FROM (SELECT s.n, string_agg(v.word, ' ' ORDER BY s.pos) AS body
				        FROM (SELECT m.n, pos, floor(exp(random() * ln($SEARCH_VOCAB + 1)))::int - 1 AS r
				              FROM (SELECT n, 3 + floor(23 * random() ^ 2)::int AS len
				                    FROM generate_series(0, $BENCH_SEARCH_ROWS - 1) n) m,
				                   generate_series(1, m.len) pos) s
				        JOIN vocab v ON v.rank = s.r
				        GROUP BY s.n) b
				  JOIN chans c ON c.i = b.n % $BENCH_SEARCH_CHANNELS;
				UPDATE messaging.channels c SET last_seq = s.n, last_activity_at = s.at
				  FROM (SELECT channel_id, max(seq) AS n, max(created_at) AS at FROM messaging.messages
				        WHERE channel_id IN (SELECT id FROM chans) GROUP BY channel_id) s
				  WHERE c.id = s.channel_id;
				COMMIT;
			SQL
		} | "$PSQL" -q -v ON_ERROR_STOP=1 "$PG_DB_URL" >/dev/null
		echo "seed_insert_secs=$(since "$t0")" >>"$seed_file"
		"$PSQL" -q "$PG_DB_URL" -c 'VACUUM ANALYZE messaging.messages'
		echo "seeded=yes" >>"$seed_file"
		echo "seed_secs=$(since "$t0")" >>"$seed_file"
		say "search: seeded in $(since "$t0") s"
	fi
	# Messaging builds its search indexes at start, in the background (CONCURRENTLY): on a
	# table that already held many rows that takes minutes; and its words job reads every
	# message not read yet (after seeding: all). Measure only once both are done.
	t0="$(date +%s.%N)"
	index_wait="" words_wait="" next_say=30
	while :; do
		[[ -n $index_wait || "$(search_indexes_valid)" != 2 ]] || index_wait="$(since "$t0")"
		[[ -n $words_wait || "$(search_words_behind)" != f ]] || words_wait="$(since "$t0")"
		[[ -n $index_wait && -n $words_wait ]] && break
		elapsed=$(($(date +%s) - ${t0%.*}))
		((elapsed < BENCH_SEARCH_INDEX_WAIT)) || break
		if ((elapsed >= next_say)); then
			if [[ -n $index_wait ]]; then
				progress="indexes valid"
			else
				progress="indexes: $("$PSQL" -At "$PG_DB_URL" -c "SELECT coalesce(string_agg(p.phase || ' ' || c.relname, ', '), 'none building') FROM pg_stat_progress_create_index p LEFT JOIN pg_class c ON c.oid = p.index_relid")"
			fi
			if [[ -n $words_wait ]]; then
				progress+="; words collected"
			else
				progress+="; words: messages up to $("$PSQL" -At "$PG_DB_URL" -c "SELECT coalesce((SELECT created_at::text FROM messaging.search_words_position), 'none') || ' read, ' || (SELECT count(*) FROM messaging.search_words) || ' words'")"
			fi
			say "search: waiting ${elapsed} s: $progress"
			next_say=$((next_say + 30))
		fi
		sleep 2
	done
	{
		# what messaging's log says of its builds at this start (none: they were valid)
		echo "index_builds=$(python3 -c '
import json, sys
built = []
for line in open(sys.argv[1], errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if isinstance(e, dict) and e.get("message") == "search index built":
        built.append("%s %.1f s" % (e.get("index"), float(e.get("seconds", 0))))
print(", ".join(built) or "none")' "$ROOT/.local/logs/messaging.log" 2>/dev/null || echo '?')"
		echo "index_wait_secs=${index_wait:-"> $BENCH_SEARCH_INDEX_WAIT"}"
		echo "words_wait_secs=${words_wait:-"> $BENCH_SEARCH_INDEX_WAIT"}"
		echo "wait_secs=$(since "$t0")"
	} >>"$seed_file"
	{
		echo "indexes_valid=$(search_indexes_valid)"
		echo "config=text_search_config=$SEARCH_CONFIG trigram_max_chars=$SEARCH_TRGM_MAX typo_similarity=$SEARCH_TYPO max_similar_words=$SEARCH_MAX_SIMILAR words_settle_ms=$SEARCH_SETTLE_MS"
		"$PSQL" -At "$PG_DB_URL" -c "SELECT 'messages_rows=' || (SELECT count(*) FROM messaging.messages)
			|| E'\nmessages_table=' || pg_size_pretty(pg_table_size('messaging.messages'))
			|| E'\nfts_index=' || coalesce(pg_size_pretty(pg_relation_size(to_regclass('messaging.messages_fts_$SEARCH_CONFIG'))), '-')
			|| E'\ncreated_at_index=' || coalesce(pg_size_pretty(pg_relation_size(to_regclass('messaging.messages_created_at'))), '-')
			|| E'\nsearch_words=' || (SELECT count(*) FROM messaging.search_words)
			|| E'\nnewer_elsewhere=' || (SELECT count(*) FROM messaging.messages WHERE created_at > (SELECT max(m.created_at)
			     FROM messaging.messages m JOIN messaging.members b ON b.channel_id = m.channel_id AND b.user_id = '$SEARCH_USER'))
			|| E'\nmean_words=' || (SELECT round(avg(array_length(string_to_array(body, ' '), 1)), 1) FROM messaging.messages
			                         WHERE channel_id IN (SELECT channel_id FROM messaging.members WHERE user_id = '$SEARCH_USER'))"
	} >>"$seed_file"
	if [[ -z $index_wait || -z $words_wait ]]; then
		say "search: messaging's search indexes or words not ready after ${BENCH_SEARCH_INDEX_WAIT} s: not measured"
	else
		say "search: indexes valid after $index_wait s, words collected after $words_wait s"
		# Queries, by class (random, seeded: the same seed gives the same file): class, query,
		# channel id (channel class only). Words come from 400 random messages of the user's
		# channels, so they follow the bodies' distribution.
		"$PSQL" -q -At -F $'\t' -v ON_ERROR_STOP=1 "$PG_DB_URL" >"$RAW/search-queries.tsv" <<-SQL
			\o /dev/null
			SELECT setseed(0.29);
			$(search_vocab_sql)
			CREATE TEMP TABLE mine AS
			  SELECT channel_id AS id FROM messaging.members WHERE user_id = '$SEARCH_USER' ORDER BY 1;
			CREATE TEMP TABLE sample AS
			  SELECT array_remove(regexp_split_to_array(lower(body), '[^a-z]+'), '') AS w
			  FROM messaging.messages WHERE channel_id IN (SELECT id FROM mine) AND NOT deleted AND system IS NULL
			  ORDER BY random() LIMIT 400;
			CREATE TEMP TABLE long_words AS
			  SELECT (SELECT x FROM unnest(w) x WHERE length(x) >= 6 ORDER BY random() LIMIT 1) AS x FROM sample;
			\o
			SELECT 'common', word, '' FROM vocab WHERE rank < 20 ORDER BY rank;
			SELECT 'rare', word, '' FROM vocab WHERE rank >= $SEARCH_VOCAB / 2 ORDER BY random() LIMIT 50;
			SELECT 'two-words', w[i] || ' ' || w[j], ''
			  FROM (SELECT w, 1 + floor(random() * cardinality(w))::int AS i, 1 + floor(random() * cardinality(w))::int AS j
			        FROM sample) s
			  WHERE w[i] <> w[j] LIMIT 50;
			SELECT 'substring', substr(x, 2 + floor(random() * (length(x) - l - 1))::int, l), ''
			  FROM (SELECT x, least(3 + floor(random() * 3)::int, length(x) - 2) AS l FROM long_words WHERE x IS NOT NULL) s
			  LIMIT 50;
			SELECT 'typo', t, ''
			  FROM (SELECT left(x, p - 1) || substr(x, p + 1, 1) || substr(x, p, 1) || substr(x, p + 2) AS t
			        FROM (SELECT x, 2 + floor(random() * (length(x) - 3))::int AS p FROM long_words WHERE x IS NOT NULL OFFSET 100) s
			        WHERE substr(x, p, 1) <> substr(x, p + 1, 1)) s
			  WHERE NOT EXISTS (SELECT 1 FROM vocab WHERE word = t) LIMIT 50;
			-- (g > 0: a reference to g, so each row draws again)
			SELECT 'channel', v.word, c.id
			  FROM generate_series(1, 50) g,
			       LATERAL (SELECT word FROM vocab WHERE rank < 20 AND g > 0 ORDER BY random() LIMIT 1) v,
			       LATERAL (SELECT id FROM mine WHERE g > 0 ORDER BY random() LIMIT 1) c;
		SQL
		echo "$(load)" >"$RAW/load-9.txt"
		runs="${BENCH_SEARCH_CONCURRENCY//[^,]/}"
		lg --json "$RAW/search.json" --timeout "$(((${#runs} + 1) * BENCH_SEARCH_RUN_SECS + 900))" search \
			--user "$SEARCH_USER" --queries "$RAW/search-queries.tsv" --requests "$BENCH_SEARCH_REQUESTS" \
			--concurrency "$BENCH_SEARCH_CONCURRENCY" --max-secs "$BENCH_SEARCH_RUN_SECS" ||
			say "search scenario reported failures (see above)"
		echo "$(load)" >>"$RAW/load-9.txt"
		# The plans of one query per class (its slowest at the first concurrency, else its first
		# in the file), as messaging runs it: in a transaction with the word similarity
		# threshold set, the similar words' lookup (a one-word query of 3 to trigram_max_chars
		# characters), then the messages' query with the words it found, over the channels
		# searched (the user's, or the one named).
		all_chans="{$("$PSQL" -At "$PG_DB_URL" -c "SELECT string_agg(channel_id::text, ',' ORDER BY channel_id) FROM messaging.members WHERE user_id = '$SEARCH_USER'")}"
		for class in $(cut -f1 "$RAW/search-queries.tsv" | uniq); do
			IFS=$'\t' read -r _ q ch < <(
				python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
s = next(c for c in r["runs"][0]["classes"] if c["class"] == sys.argv[2])["slowest"][0]
print(sys.argv[2], s["query"], s["channel"] or "", sep="\t")' "$RAW/search.json" "$class" 2>/dev/null ||
					grep -m1 "^$class"$'\t' "$RAW/search-queries.tsv"
			)
			chans="$all_chans"
			[[ -z $ch ]] || chans="{$ch}"
			words=()
			if search_widens "$q"; then
				mapfile -t words < <({
					echo "BEGIN;"
					echo "SET LOCAL search_path = messaging;"
					echo "SELECT set_config('pg_trgm.similarity_threshold', '$SEARCH_TYPO', true) \\gset"
					echo "$(search_words_sql "$q");"
					echo "COMMIT;"
				} | "$PSQL" -q -At -v ON_ERROR_STOP=1 "$PG_DB_URL")
			fi
			{
				echo "-- class $class: q = '$q'${ch:+, channel_id = $ch}; similar words: ${words[*]:-(none)}"
				echo "BEGIN;"
				echo "SET LOCAL search_path = messaging;"
				echo "SELECT set_config('pg_trgm.similarity_threshold', '$SEARCH_TYPO', true) \\gset"
				! search_widens "$q" || echo "EXPLAIN (ANALYZE, BUFFERS) $(search_words_sql "$q");"
				echo "EXPLAIN (ANALYZE, BUFFERS) $(search_sql "$q" "$chans" "${words[@]}");"
				echo "COMMIT;"
			} >"$RAW/explain-search-$class.sql"
			{
				cat "$RAW/explain-search-$class.sql"
				echo
				"$PSQL" -q -At "$PG_DB_URL" -f "$RAW/explain-search-$class.sql" 2>&1
			} >"$RAW/explain-search-$class.txt"
			rm -f "$RAW/explain-search-$class.sql"
		done
	fi
fi

# ---- report
say "writing $OUT/RESULTS.md and $OUT/latency.png"
# The plot needs matplotlib: use the system's, else a private venv (PyPI) under .local.
PY=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
	VENV="$ROOT/.local/bench-venv"
	if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
		say "installing matplotlib into $VENV"
		python3 -m venv "$VENV" && "$VENV/bin/pip" install -q matplotlib || say "matplotlib unavailable: no plot"
	fi
	[[ -x $VENV/bin/python ]] && PY="$VENV/bin/python"
fi
"$PY" "$ROOT/scripts/bench_report.py" "$RAW" "$OUT"

# Scenario 9's section and summary row, added to RESULTS.md (before the plot);
# bench_report.py leaves them out.
if [[ -f $RAW/search-seed.txt ]]; then
	python3 - "$RAW" "$OUT/RESULTS.md" <<-'PY'
	import json, os, re, sys
	raw, results = sys.argv[1], sys.argv[2]
	target = 50.0


	def text(name):
	    p = os.path.join(raw, name)
	    return open(p).read() if os.path.exists(p) else ""


	def pairs(name):
	    return dict(l.split("=", 1) for l in text(name).splitlines() if "=" in l)


	seed, env = pairs("search-seed.txt"), pairs("env.txt")
	rep = json.loads(text("search.json")) if text("search.json") else None
	loads = [l for l in text("load-9.txt").splitlines() if l.strip()]
	rows, chans, uc = (int(env.get(k, "0")) for k in
	                   ("BENCH_SEARCH_ROWS", "BENCH_SEARCH_CHANNELS", "BENCH_SEARCH_USER_CHANNELS"))
	settings = dict(kv.split("=", 1) for kv in seed.get("config", "").split() if "=" in kv)
	fts = "messages_fts_" + settings.get("text_search_config", "simple")
	if seed.get("seeded") == "yes":
	    how = (f"seeded by this run in {seed.get('seed_secs')} s: INSERT and channel counters "
	           f"{seed.get('seed_insert_secs')} s, then `VACUUM ANALYZE messaging.messages`")
	else:
	    how = "seeded by an earlier run, reused"
	md = [f"## 9. Search: `GET /v1/search` over {rows:,} messages, a user in {uc} of {chans} channels", ""]
	md.append(
	    f"{rows:,} messages written with SQL ({how}), round-robin over {chans} group channels (gapless `seq`, "
	    "`created_at` rising over the last 90 days); `messaging.messages` holds "
	    f"{seed.get('messages_rows', '?')} rows in all (table {seed.get('messages_table', '?')}, `{fts}` "
	    f"{seed.get('fts_index', '?')}, `messages_created_at` {seed.get('created_at_index', '?')}; "
	    f"`search_words` {seed.get('search_words', '?')} words). Bodies: 3–25 words "
	    f"(short ones likelier; {seed.get('mean_words', '?')} on average), the word of rank r drawn with probability "
	    "∝ 1/(r+1) from a 5,000-word vocabulary (about 100 common English chat words, then pronounceable made-up "
	    f"words). The user `bench-search` is a member of {uc} of the channels: it searches {uc / max(chans, 1):.0%} "
	    f"of the messages; {seed.get('newer_elsewhere', '?')} messages of other channels (earlier scenarios' and "
	    "runs' traffic) are newer than its newest one: a newest-first read skips them. Before measuring, the bench waits for what messaging builds in the background after "
	    f"a start: its search indexes (`{fts}`, `messages_created_at`) were valid after "
	    f"**{seed.get('index_wait_secs', '?')} s** (built at this start, by messaging's log: "
	    f"{seed.get('index_builds', '?')}), and its words job had read every message (a seed resets "
	    f"its position: it reads the seeded messages from the first) after **{seed.get('words_wait_secs', '?')} s** "
	    f"(messaging's settings: {seed.get('config', '?')}).")
	md.append("")
	md.append(
	    "Requests through the gateway (search limit off: `PARLEY__RATE__SEARCHES__N=0`), `limit=20`, round-robin "
	    "over the query classes, each request a random query of its class (`bench/raw/search-queries.tsv`): "
	    "**common** one of the 20 most frequent words; **rare** a word of rank ≥ 2,500; **two-words** two words of "
	    "one seeded message; **substring** 3–5 letters from inside a word of ≥ 6; **typo** a word of ≥ 6 letters "
	    "with two adjacent letters swapped; **channel** a common word with `channel_id=` one of the user's channels "
	    "(a one-word query of 3 or more characters is widened with up to "
	    f"{settings.get('max_similar_words', '?')} words of the messages that contain it or resemble it). "
	    f"{rep['config']['warmup'] if rep else '?'} requests first, not recorded. Every answer is checked: `200`, "
	    "at most 20 hits, newest first, only the user's channels (only the one asked). "
	    f"Target: p99 < {target:.0f} ms. Load: {' → '.join(loads[:2]) if loads else '-'}.")
	md.append("")
	if not rep:
	    summary = "not measured"
	    md.append("**Not measured**: messaging's search indexes were not valid in time." if seed.get("indexes_valid") != "2"
	              else "**No report** from the load generator (see the run's output).")
	    md.append("")
	else:
	    parts = []
	    for run in rep["runs"]:
	        cut = (f" of {run['planned']} (the run stopped making requests after {rep['config']['max_secs']} s)"
	               if run["requests"] < run.get("planned", run["requests"]) else "")
	        md.append(f"Concurrency {run['concurrency']}: {run['requests']}{cut} requests, {run['requests_per_sec']:.0f}/s, "
	                  f"{run['errors']} errors, {run['wrong']} failed checks.")
	        md.append("")
	        md.append("| class | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | mean hits | answers without a hit | errors + failed checks | slowest queries |")
	        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	        lines = [(c["class"], c, c["zero_hits"]) for c in run["classes"]]
	        lines.append(("**all**", run, sum(c["zero_hits"] for c in run["classes"])))
	        for name, c, zero in lines:
	            l = c["latency"]
	            p99 = f"**{l['p99_ms']:.1f}**" if l["p99_ms"] > target or c is run else f"{l['p99_ms']:.1f}"
	            slow = ", ".join(f"`{x['query']}` {x['ms']:.0f}" for x in c.get("slowest", []))
	            md.append(f"| {name} | {c['requests']} | {l['p50_ms']:.1f} | {l['p90_ms']:.1f} | {p99} | {l['p999_ms']:.1f} | "
	                      f"{l['max_ms']:.1f} | {c['mean_hits']:.1f} | {zero} | {c['errors'] + c['wrong']} | {slow} |")
	        md.append("")
	        md.extend(f"- problem: `{p}`" for p in run.get("problems", []))
	        if run.get("problems"):
	            md.append("")
	        slow = [c for c in run["classes"] if c["latency"]["p99_ms"] > target]
	        parts.append(f"concurrency {run['concurrency']}: p99 **{run['latency']['p99_ms']:.1f} ms** "
	                     f"(p50 {run['latency']['p50_ms']:.1f})"
	                     + (f"; over {target:.0f} ms: " + ", ".join(f"{c['class']} {c['latency']['p99_ms']:.0f} ms" for c in slow)
	                        if slow else ""))
	    summary = "; ".join(parts)
	explains = []
	for name in sorted(os.listdir(raw)):
	    m = re.match(r"explain-search-(.+)\.txt$", name)
	    if not m:
	        continue
	    t = text(name)
	    q = re.search(r"^-- class \S+: (.*)$", t, re.M)
	    ms = re.findall(r"Execution Time: ([0-9.]+) ms", t)
	    idx = sorted(set(re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\S+)", t)))
	    words_ms = ms[0] if len(ms) == 2 else "-"
	    explains.append(f"| {m.group(1)} | {q.group(1) if q else '?'} | {words_ms} | {ms[-1] if ms else '?'} | "
	                    f"{', '.join(f'`{i}`' for i in idx) or 'none'} | `bench/raw/{name}` |")
	if explains:
	    md.append("`EXPLAIN (ANALYZE, BUFFERS)` after the load, one query per class (its slowest at the first concurrency): the SQL "
	              "`services/messaging/src/store/search.rs` builds, literals in place of its parameters, in a transaction "
	              "with `search_path = messaging` and the word similarity threshold set, as messaging runs it (the "
	              "similar words' lookup in `search_words`, for a one-word query of 3 or more characters, then the "
	              "messages' query with the words it found):")
	    md.append("")
	    md.append("| class | query | similar words ms | messages ms | indexes used | plan |\n|---|---|---:|---:|---|---|")
	    md.extend(explains)
	    md.append("")
	out = open(results).read().split("\n")
	if "## Summary" in out:  # the summary row, after the summary table's last row
	    i = out.index("## Summary")
	    j = next((k for k in range(i, len(out)) if out[k].startswith("|")), None)
	    if j is not None:
	        while j < len(out) and out[j].startswith("|"):
	            j += 1
	        out.insert(j, f"| 9 search over {rows:,} messages, a user in {uc} channels, p99 < {target:.0f} ms | {summary} |")
	at = next((k for k, l in enumerate(out) if l.startswith("## Plot") or l.startswith("(no plot")), len(out))
	out[at:at] = md
	open(results, "w").write("\n".join(out))
	print(f"added scenario 9 to {results}")
	PY
fi
