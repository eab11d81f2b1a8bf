#!/usr/bin/env bash
# cp.sh — `devgpu cp` against OpenSSH's scp, both ways, on this machine.
#
# Starts its own sshd (Debian's OpenSSH, internal-sftp) on 127.0.0.1 with a
# throwaway account, as compare.sh does, and `devgpu server --dev`, with one
# session held open by a background `devgpu shell`. Then it copies the same
# file (1 GiB of random bytes by default) with `scp` (SFTP protocol, as
# OpenSSH 9 does by default) and with `devgpu cp`, up and down, BENCH_CP_N
# times each, and prints a markdown table of median throughputs and the
# ratio devgpu/scp (target: >= 1.0). All state lives in one temp dir.
#
# usage: bench/cp.sh [REPORT.md]
#
# Environment (all optional):
#   BENCH_CP_BYTES=1G BENCH_CP_N=3
#   BENCH_SSH_PORT=2223 BENCH_DEVGPU_PORT=18090
#   BENCH_USER=devgpubench       the throwaway account scp logs in to
#   DEVGPU_BIN=/path/to/devgpu   use this binary instead of building one
#   BENCH_KEEP=1                 keep the temp dir
#
# Needs root (useradd, sshd) and openssh-server / openssh-client.
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/sshd.sh
. "$REPO/bench/lib/sshd.sh"
# shellcheck source=bench/lib/wait.sh
. "$REPO/bench/lib/wait.sh"
BYTES=${BENCH_CP_BYTES:-1G}
N=${BENCH_CP_N:-3}
SSH_PORT=${BENCH_SSH_PORT:-2223}
DEVGPU_PORT=${BENCH_DEVGPU_PORT:-18090}
BENCH_USER=${BENCH_USER:-devgpubench}

log() { printf '[cp %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it creates an account and starts sshd)"
[[ -x /usr/sbin/sshd ]] || die "no /usr/sbin/sshd (apt-get install openssh-server)"
command -v scp >/dev/null || die "no scp (apt-get install openssh-client)"

WORK=$(mktemp -d /tmp/devgpu-cp.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	# Sessions outlive their server on purpose: end the held one first.
	[[ -n ${SID:-} ]] && "$DEVGPU" sessions stop "$SID" >/dev/null 2>&1
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[i]}" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 &
	PIDS+=($!)
	log "started $name (pid $!)"
}

# ---------------------------------------------------------------- OpenSSH
d=$WORK/ssh
setup_sshd "$d" "$SSH_PORT" "$BENCH_USER"
SCPDIR=$WORK/scp
install -d -o "$BENCH_USER" -g "$BENCH_USER" -m 755 "$SCPDIR"

# ---------------------------------------------------------------- devgpu
DEVGPU=${DEVGPU_BIN:-}
if [[ -z $DEVGPU ]]; then
	DEVGPU=$WORK/devgpu
	(cd "$REPO" && go build -o "$DEVGPU" ./cmd/devgpu)
fi
export DEVGPU_CONFIG=$WORK/devgpu-config.json DEVGPU_URL='' DEVGPU_TOKEN=''
start devgpu "$WORK/devgpu.log" "$DEVGPU" server --dev --data "$WORK/devgpu" --listen "127.0.0.1:$DEVGPU_PORT" --gpus t4:4
wait_for "devgpu server" 60 curl -fsS "http://127.0.0.1:$DEVGPU_PORT/healthz"
# One session, held open by a shell that reads a pipe we keep open.
mkfifo "$WORK/hold"
"$DEVGPU" shell <"$WORK/hold" >"$WORK/holder.log" 2>&1 &
PIDS+=($!)
exec 8>"$WORK/hold"
wait_for "the held session" 20 sh -c "'$DEVGPU' sessions list --json | grep -q '\"running\"'"
SID=$("$DEVGPU" sessions list --json | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -n1)
WS=$WORK/devgpu/sessions/$SID/home
log "devgpu session $SID ready"

# ---------------------------------------------------------------- measure
SRC=$WORK/src.bin
head -c "$BYTES" /dev/urandom >"$SRC"
SIZE=$(stat -c %s "$SRC")
log "source: $SIZE bytes"

# seconds CMD...: wall time of CMD, with fresh page-cache-warm files.
seconds() {
	local t0 t1
	t0=$(date +%s.%N)
	"$@" >/dev/null
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "$SIZE / $1 / 1000000" | bc -l | xargs printf '%.0f'; }

declare -A T
run() { # NAME CMD...: N timings, median seconds into T[NAME]
	local name=$1 i s=()
	shift
	for ((i = 0; i < N; i++)); do
		rm -f "$SCPDIR/f.bin" "$WS/f.bin" "$WORK/down.bin"
		s+=("$(seconds "$@")")
	done
	T[$name]=$(printf '%s\n' "${s[@]}" | median)
	log "$name: median ${T[$name]}s ($(mbps "${T[$name]}") MB/s)"
}
prep_down() { cp "$SRC" "$SCPDIR/f.bin" && chown "$BENCH_USER" "$SCPDIR/f.bin" && cp "$SRC" "$WS/f.bin"; }

run scp_up scp -F "$d/ssh_config" "$SRC" "bench:$SCPDIR/f.bin"
run devgpu_up "$DEVGPU" cp "$SRC" ":f.bin"
cmp "$SRC" "$WS/f.bin" || die "devgpu cp upload differs from the source"
# Downloads: the remote copies are put in place first, outside the timing.
run_down() {
	local name=$1 i s=()
	shift
	for ((i = 0; i < N; i++)); do
		prep_down
		rm -f "$WORK/down.bin"
		s+=("$(seconds "$@")")
	done
	T[$name]=$(printf '%s\n' "${s[@]}" | median)
	log "$name: median ${T[$name]}s ($(mbps "${T[$name]}") MB/s)"
}
run_down scp_down scp -F "$d/ssh_config" "bench:$SCPDIR/f.bin" "$WORK/down.bin"
run_down devgpu_down "$DEVGPU" cp ":f.bin" "$WORK/down.bin"
cmp "$SRC" "$WORK/down.bin" || die "devgpu cp download differs from the source"

ratio() { echo "${T[$1]} / ${T[$2]}" | bc -l | xargs printf '%.2f'; }
report=$(
	cat <<-EOF
		## devgpu cp vs scp ($SIZE bytes, median of $N, $(nproc) cores)

		| direction | scp (OpenSSH, loopback sshd) | devgpu cp | devgpu / scp throughput |
		| --- | --- | --- | --- |
		| upload | $(mbps "${T[scp_up]}") MB/s | $(mbps "${T[devgpu_up]}") MB/s | $(ratio scp_up devgpu_up)× |
		| download | $(mbps "${T[scp_down]}") MB/s | $(mbps "${T[devgpu_down]}") MB/s | $(ratio scp_down devgpu_down)× |

		Peer: $(ssh -V 2>&1 | cut -d, -f1). Target: ≥ 1.0× scp's throughput.
	EOF
)
echo "$report"
[[ -z $REPORT_FILE ]] || echo "$report" >"$REPORT_FILE"
