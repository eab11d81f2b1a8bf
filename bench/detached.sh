#!/usr/bin/env bash
# detached.sh — what a detached run that prints flat out costs the shells
# beside it, and how long 1 GiB of output takes (issue 16).
#
# It starts its own `devgpu server --dev` on 127.0.0.1 (local runtime,
# simulated t4s, all state in one temp dir), then, against that server and
# one after the other:
#
#   idle      benchtool keystroke through `devgpu shell` (a new session),
#             nothing else running: one `x` at a time, from the write to
#             the PTY until its echo is read back
#   loaded    the same, while a detached run in another session prints
#             64 MiB pieces of x through tr (1 GiB at least, and on until
#             the keystrokes are done): its agent reads and timestamps all
#             of it, drops what the control plane does not take, and the
#             control plane stores what it takes, up to the project's log
#             limit
#   1 GiB     `devgpu run --detach -- 'head -c 1073741824 /dev/zero | tr
#             "\0" x; echo; echo THE END'` timed from the call until
#             `devgpu wait` returns, beside the session's own running
#             seconds; then the log's size, the store's files (devgpu.db
#             and its WAL) and a check that `devgpu logs` ends with THE END
#
# and prints a markdown report: p50 and p99 of both keystroke figures and
# their ratio (loaded / idle), and the 1 GiB run's figures.
#
# usage: bench/detached.sh [REPORT.md]
# Environment: BENCH_KEYS=300 keystrokes per side, BENCH_DETACHED_PORT=18092,
#   DEVGPU_BIN=/path/to/devgpu, BENCH_KEEP=1 keeps the temp dir.
# Needs Go, curl and jq; not root.
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/wait.sh
. "$REPO/bench/lib/wait.sh"
# shellcheck source=bench/lib/devserver.sh
. "$REPO/bench/lib/devserver.sh"
KEYS=${BENCH_KEYS:-300}
PORT=${BENCH_DETACHED_PORT:-18092}
WORK=$(mktemp -d /tmp/devgpu-detached-bench.XXXXXX)
SERVER_PID=

log() { printf '[detached %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

trap devserver_cleanup EXIT
trap 'exit 130' INT TERM

command -v go >/dev/null || die "go is not on PATH"
command -v curl >/dev/null || die "curl is not on PATH: apt-get install curl"
command -v jq >/dev/null || die "jq is not on PATH: apt-get install jq"
port_free "$PORT" || die "127.0.0.1:$PORT is taken (set BENCH_DETACHED_PORT)"

cd "$REPO"
DEVGPU=${DEVGPU_BIN:-$WORK/devgpu}
if [[ -z ${DEVGPU_BIN:-} ]]; then
	log "building devgpu and benchtool"
	go build -o "$DEVGPU" ./cmd/devgpu
fi
go build -o "$WORK/benchtool" ./bench/cmd/benchtool

export DEVGPU_CONFIG=$WORK/config.json
unset DEVGPU_URL DEVGPU_TOKEN
DATA=$WORK/data
"$DEVGPU" server --dev --data "$DATA" --listen "127.0.0.1:$PORT" --gpus t4:4 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
log "started devgpu server (pid $SERVER_PID) on 127.0.0.1:$PORT"
wait_for "devgpu server" 30 curl -fsS "http://127.0.0.1:$PORT/healthz"
wait_for "devgpu CLI config" 10 test -s "$DEVGPU_CONFIG"
"$DEVGPU" run -- true || die "devgpu run -- true failed; see the server log"
LOG_LIMIT=$("$DEVGPU" admin project show default --json | jq -r '.effective.log_limit_bytes.value // empty')

RESULTS=$WORK/results.jsonl
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
keystrokes() { # NAME LABEL
	log "$2: $KEYS keystrokes"
	"$WORK/benchtool" keystroke -name "$1" -label "$2" -n "$KEYS" -out "$RESULTS" -- "$DEVGPU" shell -p default --gpu t4 ||
		die "benchtool keystroke ($1) failed"
}
session() { "$DEVGPU" sessions list --all --json | jq -c --arg id "$1" '.[] | select(.id == $id)'; }
# seconds_between A B: B - A, both RFC 3339 times.
seconds_between() { echo "$(date -d "$2" +%s.%N) - $(date -d "$1" +%s.%N)" | bc -l | xargs printf '%.2f'; }
# detach CMD: start a detached run, print its id.
detach() {
	local out id
	out=$("$DEVGPU" run --detach -p default --gpu t4 -- "$1") || die "devgpu run --detach failed: $out"
	for id in $("$DEVGPU" sessions list --json | jq -r '.[].id'); do
		[[ $out == *"$id"* ]] && { echo "$id"; return; }
	done
	die "devgpu run --detach printed no session id: $out"
}

# ---------------------------------------------------------------- idle
keystrokes detached_keystroke_idle "devgpu shell, nothing else running"

# ---------------------------------------------------------------- loaded
# beside_printer NAME LABEL SINK: keystrokes while a detached run in
# another session prints 64 MiB pieces flat out (at least 1 GiB, and on
# until the keystrokes are done), its output going to SINK: "" (through
# devgpu, into the log) or ">/dev/null" (discarded inside the session: the
# same CPU load with no output to capture). Sets PRINTED to what it says
# it printed.
beside_printer() {
	local run
	run=$(detach "n=0; while [ \$n -lt 16 ] || [ ! -e \"\$HOME/stop\" ]; do head -c 67108864 /dev/zero | tr '\\0' x $3; n=\$((n+1)); done; echo; echo \"printed \$((n * 64)) MiB\"")
	log "detached run $run prints${3:+ to $3}"
	wait_for "the detached run to start" 30 sh -c "'$DEVGPU' sessions list --json | jq -e --arg id $run '.[] | select(.id == \$id and .state == \"running\")'"
	[[ -n $3 ]] || wait_for "the detached run to print" 30 sh -c "'$DEVGPU' sessions list --json | jq -e --arg id $run '.[] | select(.id == \$id and .log_bytes > 0)'"
	keystrokes "$1" "$2"
	local state
	state=$(session "$run" | jq -r .state)
	[[ $state == running ]] || die "the printing run was $state when the keystrokes were done; the loaded figure is not loaded"
	touch "$DATA/sessions/$run/home/stop"
	"$DEVGPU" wait "$run" >/dev/null || die "the printing run failed; see the server log"
	PRINTED=$("$DEVGPU" logs "$run" 2>/dev/null | tail -n 1)
}
beside_printer detached_keystroke_loaded "devgpu shell, beside a detached run printing flat out" ""
LOADED_PRINTED=$PRINTED
beside_printer detached_keystroke_discarded "devgpu shell, beside the same run printing to /dev/null" ">/dev/null"
DISCARDED_PRINTED=$PRINTED

# ---------------------------------------------------------------- 1 GiB
log "a detached run printing 1 GiB"
t0=$(date +%s.%N)
GIB=$(detach 'head -c 1073741824 /dev/zero | tr "\0" x; echo; echo THE END')
"$DEVGPU" wait "$GIB" >/dev/null || die "the 1 GiB run failed; see the server log"
t1=$(date +%s.%N)
WALL=$(echo "$t1 - $t0" | bc -l | xargs printf '%.2f')
S=$(session "$GIB")
RUNNING=$(seconds_between "$(jq -r .started_at <<<"$S")" "$(jq -r .ended_at <<<"$S")")
LOG_BYTES=$(jq -r '.log_bytes // 0' <<<"$S")
[[ $(jq -r .end_reason <<<"$S") == completed && $(jq -r .exit_status <<<"$S") == 0 ]] || die "the 1 GiB run ended: $S"
[[ $("$DEVGPU" logs "$GIB" 2>/dev/null | tail -n 1) == "THE END" ]] || die "the 1 GiB run's log does not end with THE END"
store_bytes() { stat -c %s "$DATA/devgpu.db" "$DATA/devgpu.db-wal" 2>/dev/null | paste -sd+ | bc; }
STORE=$(store_bytes)
log "1 GiB: ${WALL}s from the call to wait's return, ${RUNNING}s running; log $LOG_BYTES bytes; store $STORE bytes"

# ---------------------------------------------------------------- report
raw() { jq -r --arg n "$1" "select(.name == \$n) | .$2" "$RESULTS" | tail -n 1; }
fig() { printf '%.2f' "$(raw "$1" "$2")"; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
mib() { echo "$1 / 1048576" | bc -l | xargs printf '%.1f'; }
report=$WORK/report.md
{
	echo "## Keystroke echo beside a detached run printing flat out — $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	# shellcheck disable=SC1091
	echo "Host: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")." \
		"devgpu at $(git rev-parse --short HEAD 2>/dev/null || echo "a tree without git")$([[ -z $(git status --porcelain 2>/dev/null | head -1) ]] || echo ' with local changes')."
	echo "Command: \`bench/detached.sh\` (BENCH_KEYS=$KEYS); project default's log limit $(mib "${LOG_LIMIT:-0}") MiB." \
		"Load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	echo
	echo "| keystroke echo, \`devgpu shell\` | p50 | p99 |"
	echo "| --- | --- | --- |"
	echo "| nothing else running | $(fig detached_keystroke_idle median_ms) ms | $(fig detached_keystroke_idle p99_ms) ms |"
	echo "| beside a detached run printing ($LOADED_PRINTED in all) | $(fig detached_keystroke_loaded median_ms) ms | $(fig detached_keystroke_loaded p99_ms) ms |"
	echo "| beside the same run printing to /dev/null ($DISCARDED_PRINTED in all) | $(fig detached_keystroke_discarded median_ms) ms | $(fig detached_keystroke_discarded p99_ms) ms |"
	echo "| loaded / idle | $(ratio "$(raw detached_keystroke_loaded median_ms)" "$(raw detached_keystroke_idle median_ms)")× | $(ratio "$(raw detached_keystroke_loaded p99_ms)" "$(raw detached_keystroke_idle p99_ms)")× |"
	echo "| loaded / discarded (devgpu's capture, beside the same CPU load) | $(ratio "$(raw detached_keystroke_loaded median_ms)" "$(raw detached_keystroke_discarded median_ms)")× | $(ratio "$(raw detached_keystroke_loaded p99_ms)" "$(raw detached_keystroke_discarded p99_ms)")× |"
	echo
	echo "A detached run printing 1 GiB (\`head -c 1073741824 /dev/zero | tr '\\0' x\`, then THE END):" \
		"${WALL} s from \`devgpu run --detach\` until \`devgpu wait\` returned (${RUNNING} s running, by the session's times);" \
		"its log keeps $(mib "$LOG_BYTES") MiB; the store (devgpu.db and its WAL) is $(mib "$STORE") MiB after both runs."
} >"$report"
cat "$report"
if [[ -n $REPORT_FILE ]]; then
	cp "$report" "$REPORT_FILE"
	log "report written to $REPORT_FILE"
fi
