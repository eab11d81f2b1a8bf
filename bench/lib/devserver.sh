# shellcheck shell=bash
# devserver.sh — the exit trap of benchmarks that start one `devgpu server
# --dev` of their own (console.sh, detached.sh). The sourcing script sets
# WORK, SERVER_PID (empty until its server runs) and DEVGPU, and defines
# log.

# devserver_cleanup ends the server's sessions (they outlive their server
# on purpose), stops the server, shows the tail of its log when the script
# failed, removes WORK unless BENCH_KEEP is set, and exits with the
# script's status.
devserver_cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $SERVER_PID ]]; then
		for id in $("$DEVGPU" sessions list --json 2>/dev/null | jq -r '.[].id' 2>/dev/null); do
			"$DEVGPU" sessions stop "$id" >/dev/null 2>&1 || true
		done
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	if [[ $rc != 0 && -f $WORK/server.log ]]; then
		echo "---- last lines of the server log ----" >&2
		tail -n 20 "$WORK/server.log" >&2
	fi
	if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
