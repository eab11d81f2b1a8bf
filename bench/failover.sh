#!/usr/bin/env bash
# failover.sh — DESIGN.md's target "a shell through a killed replica continues
# in the same PTY within 5 s, nothing typed lost" (issue 12).
#
# It runs e2e's TestFailoverBenchmark: three real `devgpu server` replicas
# (local runtime, built from this tree) on a private PostgreSQL the test
# initialises (initdb from /usr/lib/postgresql/*/bin, as user postgres when
# run as root), one `devgpu shell` on a real PTY behind a balancing TCP proxy.
# Each round types a command, SIGKILLs the replica the shell is attached
# through, types another at once, and times from the kill until that second
# command has answered from the same shell (same $$); the first command's
# output must have arrived too. The killed replica is restarted before the
# next round. It prints the median and max over the rounds and the machine.
#
# usage: bench/failover.sh [RUNS]     (default 10)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${1:-10}
cd "$REPO"
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "postgres: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
echo "command: DEVGPU_BENCH_FAILOVER_RUNS=$RUNS go test -count=1 -run TestFailoverBenchmark -v ./e2e/"
DEVGPU_BENCH_FAILOVER_RUNS=$RUNS go test -count=1 -timeout 20m -run 'TestFailoverBenchmark$' -v ./e2e/ 2>&1 |
	grep -E 'round [0-9]+:|^FAILOVER|^(---|ok|FAIL)' | sed 's/^ *//'
