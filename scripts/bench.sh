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
: "${BENCH_ONLY:=1 2 3 4 5 6 7 8}"
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
# rate are switched off or raised.
BENCH_GATEWAY_ENV="PARLEY__RATE__MESSAGES__N=1000000000 PARLEY__RATE__MESSAGES__WINDOW_SECS=1 PARLEY__RATE__CHANNEL_CREATIONS__N=0 PARLEY__RATE__JOINS__N=0 PARLEY__WS__FRAMES_PER_SEC=1000000 PARLEY__WS__FRAMES_BURST=1000000"
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
export BENCH_HOT_MEMBERS BENCH_HOT_RATES BENCH_REFERENCE BENCH_ABUSE_BOGUS BENCH_ABUSE_SECS
export BENCH_ONLY BENCH_CLIENTS BENCH_CHANNELS BENCH_MEMBERS BENCH_RATES BENCH_STEP_SECS \
	BENCH_P99_MS BENCH_FIXED_RATE BENCH_FIXED_SECS BENCH_FANOUT_MEMBERS BENCH_FANOUT_RATE \
	BENCH_FANOUT_MESSAGES BENCH_IDLE BENCH_IDLE_USERS BENCH_HISTORY_ROWS \
	BENCH_HISTORY_REQUESTS BENCH_PGBENCH_SECS

say() { printf '\nbench: %s\n' "$*" >&2; }
want() { [[ " $BENCH_ONLY " == *" $1 "* ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.log "$RAW"/*.txt
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
	local tag="$1"
	say "1/8 ${tag}ramp: max sustained throughput with p99 < ${BENCH_P99_MS} ms (load $(load))"
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
		$(for s in gateway messaging presence receipts notification; do printf -- '--watch %s=%s ' "$s" "$(cat "$ROOT/.local/run/$s.pid")"; done) \
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
	say "2/8 fixed rate ${BENCH_FIXED_RATE} msg/s for ${BENCH_FIXED_SECS}s (load $(load))"
	echo "$(load)" >"$RAW/load-2.txt"
	lg --json "$RAW/fixed.json" traffic --clients "$BENCH_CLIENTS" --channels "$BENCH_CHANNELS" \
		--members "$BENCH_MEMBERS" --rate "$BENCH_FIXED_RATE" --duration "$BENCH_FIXED_SECS"
	echo "$(load)" >>"$RAW/load-2.txt"
fi

# ---- 3: fan-out
if want 3; then
	say "3/8 fan-out: 1 channel, ${BENCH_FANOUT_MEMBERS} connected members (load $(load))"
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
	say "6/8 ${tag}ceiling: pgbench, one send transaction, ${PG_CLIENTS} clients, ${BENCH_CHANNELS} channels (load $(load))"
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
	say "7/8 hot channel: ${BENCH_HOT_MEMBERS} members all sending (load $(load))"
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
	say "4/8 idle: ${BENCH_IDLE} WebSocket connections (ulimit -n $(ulimit -n), load $(load))"
	echo "$(load)" >"$RAW/load-4.txt"
	lg --json "$RAW/idle.json" idle --connections "$BENCH_IDLE" --users "$BENCH_IDLE_USERS" \
		--hold 10 --gateway-pid "$GATEWAY_PID" || say "idle scenario reported failures (see above)"
	echo "$(load)" >>"$RAW/load-4.txt"
fi

# ---- 5: history
if want 5; then
	say "5/8 history: channel of ${BENCH_HISTORY_ROWS} messages (load $(load))"
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
	say "8/8 abuse: ${BENCH_ABUSE_BOGUS} made-up channel ids, a frame flood beside a calm client (load $(load))"
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
