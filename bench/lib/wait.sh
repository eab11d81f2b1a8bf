# shellcheck shell=bash
# wait.sh — what the benchmarks wait with, sourced by compare.sh, cp.sh
# and console.sh. The sourcing script defines die.

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds, at most SECONDS.
wait_for() {
	local what=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "$what not ready after ${secs}s"
		sleep 0.1
	done
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
