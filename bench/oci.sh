#!/usr/bin/env bash
# oci.sh — how fast a session starts on the oci runtime (runc containers),
# cold (image already pulled) and from a warm pool, beside the local runtime.
#
# For each of local, oci and oci-warm it starts its own `devgpu server --dev`
# (the oci ones with a busybox image served by `benchtool registry` on
# 127.0.0.1, their own bridge and subnet), then times `devgpu run -- true`
# end to end (benchtool latency, a pause between runs so a warm pool can
# refill) and reads the server's devgpu_session_first_byte_seconds (request
# to the first byte of the session's first shell) from /metrics.
# Target (issue 5): a warm-pool start within 1.5x of the local runtime.
#
# usage: sudo bench/oci.sh [REPORT.md]
# Environment: BENCH_OCI_N=20 runs per mode, DEVGPU_BIN=/path/to/devgpu, BENCH_KEEP=1
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_OCI_N:-20}
WORK=$(mktemp -d /tmp/dgoci.XXXXXX)
PIDS=()
BRIDGES=()

cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	# The oci runtime's disk pool stays mounted after its server stops, so
	# that workspaces stay readable on the host: unmount what lies under WORK.
	grep -o " $WORK/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	# A stopped server keeps its bridge (and table) for its next start: these
	# servers have none, and their subnets must not block a later run's.
	for b in "${BRIDGES[@]}"; do
		ip link del "$b" 2>/dev/null || true
		! command -v nft >/dev/null || nft delete table inet "devgpu_$b" 2>/dev/null || true
	done
	[[ -n ${BENCH_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[oci $(date +%H:%M:%S)] $*" >&2; }

[[ $(id -u) == 0 ]] || { echo "oci.sh needs root (runc, mounts, network namespaces)" >&2; exit 1; }
command -v runc >/dev/null || { echo "oci.sh needs runc: apt-get install runc" >&2; exit 1; }

cd "$REPO"
DEVGPU=${DEVGPU_BIN:-$WORK/devgpu}
[[ -n ${DEVGPU_BIN:-} ]] || go build -o "$DEVGPU" ./cmd/devgpu
CGO_ENABLED=0 go build -o "$WORK/devgpu-agent" ./cmd/devgpu
go build -o "$WORK/benchtool" ./bench/cmd/benchtool

"$WORK/benchtool" registry >"$WORK/ref" 2>"$WORK/registry.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $WORK/ref ]] && break; sleep 0.1; done
REF=$(cat "$WORK/ref")
log "image $REF"

rows=()
port=18200
for mode in local oci oci-warm; do
	port=$((port + 1))
	d=$WORK/$mode
	mkdir -p "$d"
	args=(server --dev --data "$d/data" --listen "127.0.0.1:$port" --gpus t4:4)
	if [[ $mode != local ]]; then
		BRIDGES+=("dgb$port")
		cat >"$d/server.json" <<JSON
{"runtime": "oci", "oci": {"agent_binary": "$WORK/devgpu-agent", "default_image": "$REF", "bridge": "dgb$port", "subnet": "10.$((port - 18100)).0.0/24", "disk_pool": "4GB"}}
JSON
		args+=(--config "$d/server.json")
	fi
	DEVGPU_CONFIG=$d/config.json "$DEVGPU" "${args[@]}" >"$d/server.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
	export DEVGPU_CONFIG=$d/config.json
	"$DEVGPU" run -- true # pulls the image once
	pause=0s
	if [[ $mode == oci-warm ]]; then
		"$DEVGPU" admin pool set default --gpu t4 --size 2 2>/dev/null
		for _ in $(seq 100); do
			"$DEVGPU" admin pool list --json | grep -q '"ready": 2' && break
			sleep 0.1
		done
		pause=1s
	fi
	log "$mode: $N runs"
	"$WORK/benchtool" latency -name "run_true_$mode" -n "$N" -warmup 2 -pause "$pause" -out "$WORK/results.jsonl" -- "$DEVGPU" run -- true 2>"$d/latency.txt"
	summary=$(cat "$d/latency.txt")
	metrics=$(curl -fsS "http://127.0.0.1:$port/metrics")
	sum=$(awk '/^devgpu_session_first_byte_seconds_sum/ {print $2}' <<<"$metrics")
	count=$(awk '/^devgpu_session_first_byte_seconds_count/ {print $2}' <<<"$metrics")
	first=$(awk -v s="$sum" -v c="$count" 'BEGIN { if (c > 0) printf "%.1f", 1000 * s / c; else print "n/a" }')
	claimed=$(awk '/^devgpu_admissions_total\{outcome="claimed"/ {print $2}' <<<"$metrics")
	rows+=("| $mode | $summary | $first ms | ${claimed:-0} |")
	if [[ $mode == oci-warm ]]; then
		# Ready sessions outlive a server on purpose: end them first.
		"$DEVGPU" admin pool set default --gpu t4 --size 0 2>/dev/null
		for _ in $(seq 100); do
			"$DEVGPU" sessions list --all --json | grep -q '"state": "running"' || break
			sleep 0.1
		done
	fi
	kill "${PIDS[-1]}"
	wait "${PIDS[-1]}" 2>/dev/null || true
	unset 'PIDS[-1]'
done

report=$(
	echo "| runtime | \`devgpu run -- true\` end to end | request to first byte (mean) | claimed from the pool |"
	echo "| --- | --- | ---: | ---: |"
	printf '%s\n' "${rows[@]}"
)
echo "$report"
[[ -z $REPORT_FILE ]] || echo "$report" >"$REPORT_FILE"
