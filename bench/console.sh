#!/usr/bin/env bash
# console.sh — keystroke echo through the web console's browser terminal,
# beside `devgpu shell`, against the same server in the same run (issue 14).
#
# It starts its own `devgpu server --dev` on 127.0.0.1 (local runtime,
# simulated t4s, all state in one temp dir), then times, one after the
# other and each in a new session of the same project and GPU type:
#
#   devgpu shell       benchtool keystroke on a real PTY: one `x` at a time,
#                      from the write to the PTY until its echo is read back
#   browser terminal   bench/console/echo.mjs: headless Chromium driven by
#                      playwright-core logs in with the server's admin
#                      token on My GPUs (#/), picks t4 on project
#                      default's card and presses "Open GPU terminal"
#                      (which starts the session and its shell; an address
#                      alone would stop at the "Start session" confirm
#                      step), and times one key press at a time from the keydown
#                      event until xterm.js has parsed the echo (and, as a
#                      second figure, until the next frame painted it)
#   floor              echo.mjs --floor: the same keys against xterm.js alone
#                      on a blank page that echoes them itself (no network,
#                      server or shell): what the browser's part costs here
#
# and prints benchtool's report of the two with the ratio of the p99s. If
# any side failed (benchtool or echo.mjs exiting non-zero) the report is
# still printed, with the failures listed, and the script exits 1. The
# order alternates with BENCH_CONSOLE_ROUNDS > 1 (each round a new session
# for each side; the report keeps the last round, the log shows every one).
#
# usage: bench/console.sh [REPORT.md]
# Environment: BENCH_KEYS=300 keystrokes per side, BENCH_CONSOLE_MODE=keys
#   (or input: through xterm's term.input, no key events),
#   BENCH_CONSOLE_PORT=18090, BENCH_CONSOLE_ROUNDS=1, CHROMIUM=/usr/bin/chromium,
#   DEVGPU_BIN=/path/to/devgpu, BENCH_KEEP=1 keeps the temp dir.
# Needs Go, Node.js 20+ (playwright-core), web/node_modules (`cd web && npm ci`) and Debian's
# chromium; not root.
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/wait.sh
. "$REPO/bench/lib/wait.sh"
# shellcheck source=bench/lib/devserver.sh
. "$REPO/bench/lib/devserver.sh"
KEYS=${BENCH_KEYS:-300}
MODE=${BENCH_CONSOLE_MODE:-keys}
PORT=${BENCH_CONSOLE_PORT:-18090}
ROUNDS=${BENCH_CONSOLE_ROUNDS:-1}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
WORK=$(mktemp -d /tmp/devgpu-console-bench.XXXXXX)
SERVER_PID=

log() { printf '[console %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

trap devserver_cleanup EXIT
trap 'exit 130' INT TERM

command -v go >/dev/null || die "go is not on PATH"
command -v node >/dev/null || die "node is not on PATH: install Node.js 20 or later (playwright-core needs it)"
command -v curl >/dev/null || die "curl is not on PATH: apt-get install curl"
[[ -x $CHROMIUM ]] || die "no Chromium at $CHROMIUM: apt-get install chromium, or set CHROMIUM"
[[ -d $REPO/web/node_modules/playwright-core ]] || die "web/node_modules has no playwright-core: run \`npm ci\` in web/"
port_free "$PORT" || die "127.0.0.1:$PORT is taken (set BENCH_CONSOLE_PORT)"

cd "$REPO"
DEVGPU=${DEVGPU_BIN:-$WORK/devgpu}
if [[ -z ${DEVGPU_BIN:-} ]]; then
	log "building devgpu and benchtool"
	go build -o "$DEVGPU" ./cmd/devgpu
fi
go build -o "$WORK/benchtool" ./bench/cmd/benchtool

export DEVGPU_CONFIG=$WORK/config.json
unset DEVGPU_URL DEVGPU_TOKEN
"$DEVGPU" server --dev --data "$WORK/data" --listen "127.0.0.1:$PORT" --gpus t4:4 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
log "started devgpu server (pid $SERVER_PID) on 127.0.0.1:$PORT"
deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
	kill -0 "$SERVER_PID" 2>/dev/null || die "devgpu server exited at start (its log is below)"
	((SECONDS < deadline)) || die "devgpu server not ready after 30s"
	sleep 0.1
done
wait_for "devgpu CLI config" 10 test -s "$DEVGPU_CONFIG"
"$DEVGPU" run -- true || die "devgpu run -- true failed; see the server log"
# The admin token the --dev server wrote for the CLI; echo.mjs reads it from
# the environment, never from its argv.
TOKEN=$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).token)' "$DEVGPU_CONFIG")
[[ -n $TOKEN ]] || die "no token in $DEVGPU_CONFIG"

RESULTS=$WORK/results.jsonl
FAILED=()
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# failed notes a side that failed (its own lines above say why): the report
# lists it and the script exits 1.
# joined prints its arguments separated by "; ".
joined() {
	local IFS=';'
	local s="$*"
	echo "${s//;/; }"
}

failed() {
	log "$1 failed (exit $2)"
	FAILED+=("$1 (exit $2)")
}
shell_side() {
	log "devgpu shell: $KEYS keystrokes"
	"$WORK/benchtool" keystroke -name devgpu_shell_keystroke -label "devgpu shell -p default --gpu t4" \
		-n "$KEYS" -out "$RESULTS" -- "$DEVGPU" shell -p default --gpu t4 || failed "devgpu shell: benchtool" $?
}
browser_side() {
	log "browser terminal: $KEYS keystrokes ($MODE)"
	DEVGPU_TOKEN=$TOKEN node bench/console/echo.mjs --url "http://127.0.0.1:$PORT" --project default --gpu-type t4 \
		-n "$KEYS" --mode "$MODE" --chromium "$CHROMIUM" --out "$RESULTS" || failed "browser terminal: echo.mjs" $?
	log "floor: $KEYS keystrokes ($MODE) into xterm.js alone"
	node bench/console/echo.mjs --floor -n "$KEYS" --mode "$MODE" --chromium "$CHROMIUM" --out "$RESULTS" ||
		failed "floor: echo.mjs" $?
}
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then shell_side; browser_side; else browser_side; shell_side; fi
done

report=$WORK/report.md
{
	echo "## Keystroke echo: browser terminal vs devgpu shell — $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	# shellcheck disable=SC1091
	echo "Host: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")." \
		"$("$CHROMIUM" --version 2>/dev/null | head -1), Node $(node --version)." \
		"devgpu at $(git rev-parse --short HEAD)$([[ -z $(git status --porcelain 2>/dev/null | head -1) ]] || echo ' with local changes')."
	echo "Command: \`bench/console.sh\` (BENCH_KEYS=$KEYS, BENCH_CONSOLE_MODE=$MODE, BENCH_CONSOLE_ROUNDS=$ROUNDS)." \
		"Load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	echo
	"$WORK/benchtool" report -in "$RESULTS" -measured || echo "(benchtool report failed: exit $?)"
	if ((${#FAILED[@]})); then
		echo
		echo "**Failed:** $(joined "${FAILED[@]}"); their figures are missing or marked \`*\` above, and the log above the report says why."
	fi
} >"$report"
cat "$report"
if [[ -n $REPORT_FILE ]]; then
	cp "$report" "$REPORT_FILE"
	log "report written to $REPORT_FILE"
fi
((${#FAILED[@]} == 0)) || die "${#FAILED[@]} of the measurements failed: $(joined "${FAILED[@]}")"
