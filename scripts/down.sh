#!/usr/bin/env bash
# Stop the services started by scripts/up.sh, from .local/run/<svc>.pid.
#
#   scripts/down.sh            stop every service with a pid file
#   scripts/down.sh SVC...     stop only these
#   scripts/down.sh --all      also stop this checkout's private Postgres/Redis/S3 (deps.sh stop)
#
# SIGTERM, up to ${PARLEY_STOP_TIMEOUT:-15} s to exit, then SIGKILL. Only processes that
# up.sh started from this checkout are signalled (checked through their environment).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
RUN_DIR="$ROOT/.local/run"
STOP_TIMEOUT="${PARLEY_STOP_TIMEOUT:-15}"

ALL=no
declare -a names=()
for arg in "$@"; do
	case "$arg" in
	--all) ALL=yes ;;
	-h | --help)
		sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	-*)
		echo "usage: scripts/down.sh [--all] [svc ...]" >&2
		exit 2
		;;
	*) names+=("$arg") ;;
	esac
done
if ((${#names[@]} == 0)) && [[ -d $RUN_DIR ]]; then
	for f in "$RUN_DIR"/*.pid; do
		[[ -e $f ]] || continue
		f="${f##*/}"
		names+=("${f%.pid}")
	done
fi

say() { printf 'down: %s\n' "$*" >&2; }

# True when pid $1 is the process up.sh started for service $2 from this checkout.
is_ours() {
	local pid="$1" svc="$2" envf="/proc/$1/environ"
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	[[ -r $envf ]] || return 1
	local e
	e="$({ tr '\0' '\n' <"$envf"; } 2>/dev/null)" || return 1
	grep -qxF "UPSH_SERVICE=$svc" <<<"$e" && grep -qxF "UPSH_ROOT=$ROOT" <<<"$e"
}

declare -a pids=() svcs=()
for svc in "${names[@]}"; do
	pidfile="$RUN_DIR/$svc.pid"
	pid="$(cat "$pidfile" 2>/dev/null || true)"
	if [[ -n $pid ]] && is_ours "$pid" "$svc"; then
		say "stopping $svc (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
		svcs+=("$svc")
	elif [[ -e $pidfile ]]; then
		say "$svc is not running (stale pid file removed)"
		rm -f "$pidfile"
	fi
done

deadline=$((SECONDS + STOP_TIMEOUT + 1)) # SECONDS ticks in whole seconds
for i in "${!pids[@]}"; do
	pid="${pids[$i]}"
	while is_ours "$pid" "${svcs[$i]}"; do
		# a zombie (exited, not yet reaped by its parent) counts as stopped
		[[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
		if ((SECONDS >= deadline)); then
			say "${svcs[$i]} (pid $pid) did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
	rm -f "$RUN_DIR/${svcs[$i]}.pid"
done

if [[ $ALL == yes ]]; then
	"$ROOT/scripts/deps.sh" stop
fi
