#!/usr/bin/env bash
# compare.sh — devgpu side by side with OpenSSH and Slurm on this machine.
#
# Starts three things of its own, all on loopback and all state in one temp
# dir: an sshd (Debian's OpenSSH) on 127.0.0.1:$BENCH_SSH_PORT, a one-node
# Slurm 22.05 cluster with 4 simulated t4 GPUs (munged, slurmctld, slurmd),
# and `devgpu server --dev`. Then it times the same things on all three with
# bench/cmd/benchtool, prints a markdown report (to stdout, and to the file
# given as the only argument), and stops everything it started.
#
# The console section times keystroke echo through the web console's
# terminal (headless Chromium, bench/console/echo.mjs) against the same
# devgpu server, beside `devgpu shell`'s; it needs node, web/node_modules
# (`npm ci` in web/) and Debian's chromium, and is skipped with a note
# without them. bench/console.sh runs it alone, without root.
#
# The admissions section (API only, no peer) then starts one more devgpu
# server per store engine, with 16 simulated t4s: on SQLite, and on a fresh
# PostgreSQL database it creates and drops (psql, 127.0.0.1, trust auth).
#
# usage: bench/compare.sh [REPORT.md]
#
# Environment (all optional):
#   BENCH_ONLY=devgpu,ssh,slurm,console,admissions  which sections to run
#   BENCH_CONSOLE_MODE=keys      the console's keys: real key presses (keys) or
#                                xterm's term.input (input); see bench/console/echo.mjs
#   CHROMIUM=/usr/bin/chromium   the browser the console section drives
#   BENCH_ADM_ENGINES=sqlite,postgres  the admissions section's store engines
#   BENCH_ADM_CLIENTS=64 BENCH_ADM_USERS=8 BENCH_ADM_PROJECTS=2
#   BENCH_ADM_DURATION=10s BENCH_ADM_GPUS=t4:16
#   BENCH_ADM_MAX_GPUS=8 BENCH_ADM_MAX_PER_USER=2 BENCH_ADM_QUOTA=12  the caps
#   BENCH_ADM_PORT=18081         the admissions servers' port
#   BENCH_ADM_RUNTIME=local      the admissions servers' runtime: local (an agent process
#                                per session) or inproc (the control plane alone)
#   BENCH_PG=postgres://postgres@127.0.0.1:5432   where to create the database
#   BENCH_N=50                   runs per latency measurement
#   BENCH_PROMPT_N=20            runs per time-to-prompt measurement
#   BENCH_KEYS=200               keystrokes per echo measurement
#   BENCH_JOBS=200 BENCH_WORKERS=16   the concurrent batch
#   BENCH_BYTES=1G BENCH_BULK_N=3     the bulk-output measurement
#   BENCH_SSH_PORT=2222 BENCH_SLURMCTLD_PORT=16817 BENCH_SLURMD_PORT=16818
#   BENCH_DEVGPU_PORT=18080
#   BENCH_USER=devgpubench       the throwaway account ssh logs in to
#   DEVGPU_BIN=/path/to/devgpu   use this binary instead of building one
#   BENCH_KEEP=1                 keep the temp dir (logs, configs, results)
#
# Needs root (useradd, mknod, daemons) and Debian's apt for what is missing.
# shellcheck disable=SC2016 # single quotes: expanded by the remote shell
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib/sshd.sh
. "$REPO/bench/lib/sshd.sh"
# shellcheck source=bench/lib/wait.sh
. "$REPO/bench/lib/wait.sh"

ONLY=${BENCH_ONLY:-devgpu,ssh,slurm,console,admissions}
N=${BENCH_N:-50}
PROMPT_N=${BENCH_PROMPT_N:-20}
KEYS=${BENCH_KEYS:-200}
JOBS=${BENCH_JOBS:-200}
WORKERS=${BENCH_WORKERS:-16}
BYTES=${BENCH_BYTES:-1G}
BULK_N=${BENCH_BULK_N:-3}
SSH_PORT=${BENCH_SSH_PORT:-2222}
SLURMCTLD_PORT=${BENCH_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${BENCH_SLURMD_PORT:-16818}
DEVGPU_PORT=${BENCH_DEVGPU_PORT:-18080}
BENCH_USER=${BENCH_USER:-devgpubench}
ADM_ENGINES=${BENCH_ADM_ENGINES:-sqlite,postgres}
ADM_CLIENTS=${BENCH_ADM_CLIENTS:-64}
ADM_USERS=${BENCH_ADM_USERS:-8}
ADM_PROJECTS=${BENCH_ADM_PROJECTS:-2}
ADM_DURATION=${BENCH_ADM_DURATION:-10s}
ADM_GPUS=${BENCH_ADM_GPUS:-t4:16}
ADM_MAX_GPUS=${BENCH_ADM_MAX_GPUS:-8}
ADM_MAX_PER_USER=${BENCH_ADM_MAX_PER_USER:-2}
ADM_QUOTA=${BENCH_ADM_QUOTA:-12}
ADM_PORT=${BENCH_ADM_PORT:-18081}
ADM_RUNTIME=${BENCH_ADM_RUNTIME:-local}
PG_URL=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
CONSOLE_MODE=${BENCH_CONSOLE_MODE:-keys}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

[[ $(id -u) == 0 ]] || die "run as root (it creates an account, device files and daemons)"

WORK=$(mktemp -d /tmp/devgpu-bench.XXXXXX)
chmod 755 "$WORK" # the ssh account reads its authorized_keys from here
RESULTS=$WORK/results.jsonl
PIDS=()
PG_DB= # the admissions database, dropped on exit

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do # last started, first stopped
		kill -TERM "${PIDS[i]}" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	drop_pg_db
	if [[ -n ${BENCH_KEEP:-} ]]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME LOG CMD...: run a daemon in the background, remember its pid.
start() {
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 &
	PIDS+=($!)
	log "started $name (pid $!)"
}

# ---------------------------------------------------------------- packages

install_missing() {
	local pkgs=()
	command -v go >/dev/null || die "go is not on PATH"
	command -v curl >/dev/null || pkgs+=(curl)
	if want ssh; then
		[[ -x /usr/sbin/sshd ]] || pkgs+=(openssh-server)
		command -v ssh >/dev/null || pkgs+=(openssh-client)
		command -v ssh-keygen >/dev/null || pkgs+=(openssh-client)
	fi
	if want slurm; then
		[[ -x /usr/sbin/slurmctld ]] || pkgs+=(slurmctld)
		[[ -x /usr/sbin/slurmd ]] || pkgs+=(slurmd)
		command -v srun >/dev/null || pkgs+=(slurm-client)
		[[ -x /usr/sbin/munged ]] || pkgs+=(munge)
	fi
	if want admissions && [[ ,$ADM_ENGINES, == *,postgres,* ]]; then
		command -v psql >/dev/null || pkgs+=(postgresql-client)
	fi
	if ((${#pkgs[@]})); then
		log "installing ${pkgs[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
	fi
}

# ---------------------------------------------------------------- OpenSSH

SSH=()
setup_ssh() {
	local d=$WORK/ssh
	port_free "$SSH_PORT" || die "127.0.0.1:$SSH_PORT is taken (set BENCH_SSH_PORT)"
	setup_sshd "$d" "$SSH_PORT" "$BENCH_USER"
	SSH=(ssh -F "$d/ssh_config")
	log "sshd ready: $("${SSH[@]}" bench 'echo $0 as $(id -un)')"
}

# ---------------------------------------------------------------- Slurm

SRUN=()
setup_slurm() {
	local d=$WORK/slurm
	mkdir -p "$d"/{munge,ctld,spool,dev}
	port_free "$SLURMCTLD_PORT" || die "127.0.0.1:$SLURMCTLD_PORT is taken (set BENCH_SLURMCTLD_PORT)"
	port_free "$SLURMD_PORT" || die "127.0.0.1:$SLURMD_PORT is taken (set BENCH_SLURMD_PORT)"

	# munged with its own key and socket; Slurm finds it through AuthInfo.
	local msock=$d/munge/munge.socket
	dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
	chmod 755 "$d/munge"
	chmod 400 "$d/munge/munge.key"
	start munged "$d/munge/out.log" /usr/sbin/munged --foreground --force \
		--socket="$msock" --key-file="$d/munge/munge.key" \
		--pid-file="$d/munge/munged.pid" --seed-file="$d/munge/seed" \
		--log-file="$d/munge/munged.log" --num-threads=4
	wait_for munged 10 test -S "$msock"

	# Four simulated t4s: Slurm wants a device file per GPU (char 1,3 is
	# /dev/null's), listed by hand since there is nothing to detect.
	local i files=()
	for i in 0 1 2 3; do
		mknod "$d/dev/nvidia$i" c 1 3
		files+=("$d/dev/nvidia$i")
	done
	local cpus mem
	cpus=$(nproc)
	mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
	cat >"$d/gres.conf" <<-EOF
		AutoDetect=off
		NodeName=benchnode Name=gpu Type=t4 File=$d/dev/nvidia[0-3]
	EOF
	cat >"$d/slurm.conf" <<-EOF
		ClusterName=devgpubench
		SlurmctldHost=$(hostname -s)(127.0.0.1)
		SlurmctldPort=$SLURMCTLD_PORT
		SlurmdPort=$SLURMD_PORT
		SlurmUser=root
		SlurmdUser=root
		AuthType=auth/munge
		CredType=cred/munge
		AuthInfo=socket=$msock
		StateSaveLocation=$d/ctld
		SlurmdSpoolDir=$d/spool
		SlurmctldPidFile=$d/slurmctld.pid
		SlurmdPidFile=$d/slurmd.pid
		SlurmctldLogFile=$d/slurmctld.log
		SlurmdLogFile=$d/slurmd.log
		MailProg=/bin/true
		SlurmctldDebug=error
		SlurmdDebug=error
		ProctrackType=proctrack/linuxproc
		TaskPlugin=task/none
		MpiDefault=none
		SwitchType=switch/none
		ReturnToService=2
		SelectType=select/cons_tres
		SelectTypeParameters=CR_Core_Memory
		SchedulerType=sched/backfill
		SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
		Epilog=/bin/true
		AccountingStorageType=accounting_storage/none
		JobAcctGatherType=jobacct_gather/none
		JobCompType=jobcomp/none
		GresTypes=gpu
		MaxJobCount=100000
		MinJobAge=2
		KillWait=2
		DefMemPerCPU=64
		NodeName=benchnode NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:t4:4 State=UNKNOWN
		PartitionName=bench Nodes=benchnode Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
	EOF
	export SLURM_CONF=$d/slurm.conf
	start slurmctld "$d/slurmctld.out" /usr/sbin/slurmctld -D -i -f "$SLURM_CONF"
	start slurmd "$d/slurmd.out" /usr/sbin/slurmd -D -N benchnode -f "$SLURM_CONF"
	wait_for "slurm node" 30 sh -c 'sinfo -h -N -o %t | grep -Eq "^(idle|mix|alloc)"'
	SRUN=(srun --gres=gpu:t4:1)
	wait_for srun 30 "${SRUN[@]}" true
	log "slurm ready: $(sinfo -h -N -o '%N %t %G') / CUDA_VISIBLE_DEVICES=$("${SRUN[@]}" sh -c 'echo $CUDA_VISIBLE_DEVICES' 2>/dev/null)"
}

# ---------------------------------------------------------------- devgpu

DEVGPU_EXE=
# devgpu_bin: the devgpu binary, built from this tree once unless DEVGPU_BIN names one.
devgpu_bin() {
	if [[ -n $DEVGPU_EXE ]]; then
		return
	fi
	DEVGPU_EXE=${DEVGPU_BIN:-}
	if [[ -z $DEVGPU_EXE ]]; then
		DEVGPU_EXE=$WORK/bin/devgpu
		log "building devgpu"
		(cd "$REPO" && go build -o "$DEVGPU_EXE" ./cmd/devgpu) || die "go build ./cmd/devgpu failed (set BENCH_ONLY=ssh,slurm to measure the peers alone)"
	fi
}

DEVGPU=()
SHELL_WAIT=()
setup_devgpu() {
	local d=$WORK/devgpu
	mkdir -p "$d/data"
	port_free "$DEVGPU_PORT" || die "127.0.0.1:$DEVGPU_PORT is taken (set BENCH_DEVGPU_PORT)"
	devgpu_bin
	local bin=$DEVGPU_EXE
	export DEVGPU_CONFIG=$d/config.json
	unset DEVGPU_URL DEVGPU_TOKEN
	start "devgpu server" "$d/server.log" "$bin" server --dev --data "$d/data" \
		--listen "127.0.0.1:$DEVGPU_PORT" --gpus t4:4
	wait_for "devgpu server" 30 curl -fsS "http://127.0.0.1:$DEVGPU_PORT/healthz"
	wait_for "devgpu CLI config" 10 test -s "$DEVGPU_CONFIG"
	DEVGPU=("$bin")
	"${DEVGPU[@]}" run -- true || die "devgpu run -- true failed; see $d/server.log"
	log "devgpu ready: $("${DEVGPU[@]}" run -- env | grep -E '^(DEVGPU_GPU_TYPE|CUDA_VISIBLE_DEVICES)=' | tr '\n' ' ')"
	# `--wait` is in the CLI contract; say so plainly while a build lacks it.
	if "${DEVGPU[@]}" run --help 2>&1 | grep -q -- '--wait'; then
		:
	else
		log "warning: this devgpu has no 'run --wait': the concurrent measurement will fail"
	fi
	# A shell waits for a GPU, as srun --pty does, where the CLI can.
	if "${DEVGPU[@]}" shell --help 2>&1 | grep -q -- '--wait'; then
		SHELL_WAIT=(--wait)
	fi
}

# ---------------------------------------------------------------- console

# console_missing: why the console section cannot run here, or nothing.
console_missing() {
	if ! command -v node >/dev/null; then
		echo "node is not on PATH (install Node.js 20 or later)"
	elif [[ ! -x $CHROMIUM ]]; then
		echo "no Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)"
	elif [[ ! -d $REPO/web/node_modules/playwright-core ]]; then
		echo "web/node_modules has no playwright-core (run npm ci in web/)"
	fi
}

# measure_console: keystroke echo through the browser terminal, against the
# devgpu server setup_devgpu started, logged in with its admin token (passed
# in the environment, never in argv). echo.mjs presses My GPUs' "Open GPU
# terminal"; a run of it that fails is named in CONSOLE_FAILED, which the
# report shows and which makes the script exit 1 after it.
CONSOLE_FAILED=()
measure_console() {
	local why token
	why=$(console_missing)
	if [[ -n $why ]]; then
		log "console section skipped: $why"
		return
	fi
	token=$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).token)' "$DEVGPU_CONFIG")
	log "measuring console_terminal_keystroke: browser terminal ($CONSOLE_MODE), $KEYS keys"
	DEVGPU_TOKEN=$token node "$REPO/bench/console/echo.mjs" --url "http://127.0.0.1:$DEVGPU_PORT" \
		--project default --gpu-type t4 -n "$KEYS" --mode "$CONSOLE_MODE" --chromium "$CHROMIUM" --out "$RESULTS" ||
		console_failed console_terminal_keystroke $?
	log "measuring console_terminal_keystroke_floor: the same keys into xterm.js alone"
	node "$REPO/bench/console/echo.mjs" --floor -n "$KEYS" --mode "$CONSOLE_MODE" --chromium "$CHROMIUM" --out "$RESULTS" ||
		console_failed console_terminal_keystroke_floor $?
}

# joined prints its arguments separated by "; ".
joined() {
	local IFS=';'
	local s="$*"
	echo "${s//;/; }"
}

console_failed() {
	log "$1: echo.mjs failed (exit $2)"
	CONSOLE_FAILED+=("$1 (echo.mjs exit $2)")
}

# ---------------------------------------------------------------- admissions

drop_pg_db() {
	if [[ -n $PG_DB ]]; then
		psql "$PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
			log "warning: could not drop database $PG_DB"
		PG_DB=
	fi
}

# stop_pid PID: stop one daemon started with start, and wait for it.
stop_pid() {
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# measure_admissions ENGINE: a devgpu server with its own data dir (and, for
# postgres, a fresh database), one admissions run against it, then stop it.
measure_admissions() {
	local engine=$1 d=$WORK/admissions-$1 store=() label storepid=() datadir
	mkdir -p "$d/data"
	port_free "$ADM_PORT" || die "127.0.0.1:$ADM_PORT is taken (set BENCH_ADM_PORT)"
	case $engine in
	sqlite) label=SQLite ;;
	postgres)
		label=PostgreSQL
		PG_DB=devgpu_bench_$$_$RANDOM
		if ! psql "$PG_URL/postgres" -qAtc "CREATE DATABASE $PG_DB" >/dev/null; then
			PG_DB=
			log "admissions on postgres skipped: cannot create a database at $PG_URL (set BENCH_PG)"
			return
		fi
		store=(--store "$PG_URL/$PG_DB?sslmode=disable")
		# PostgreSQL's CPU, where it runs here and its pid file can be read.
		datadir=$(psql "$PG_URL/postgres" -qAtc "SHOW data_directory" 2>/dev/null) || true
		if [[ -n $datadir && -r $datadir/postmaster.pid ]]; then
			storepid=(-store-pid "$(head -1 "$datadir/postmaster.pid")")
		fi
		;;
	*) die "BENCH_ADM_ENGINES: unknown engine $engine (sqlite, postgres)" ;;
	esac
	log "admissions on $label: devgpu server --gpus $ADM_GPUS on 127.0.0.1:$ADM_PORT"
	DEVGPU_CONFIG=$d/config.json start "devgpu server ($label)" "$d/server.log" "$DEVGPU_EXE" server --dev \
		--data "$d/data" "${store[@]}" --listen "127.0.0.1:$ADM_PORT" --gpus "$ADM_GPUS" --runtime "$ADM_RUNTIME" \
		--insecure-local-runtime # the run makes several users; the local runtime serves one person unless told
	local pid=${PIDS[-1]}
	wait_for "devgpu server ($label)" 30 curl -fsS "http://127.0.0.1:$ADM_PORT/healthz"
	wait_for "devgpu CLI config ($label)" 10 test -s "$d/config.json"
	measure admissions "devgpu_admissions_$engine" \
		"$ADM_CLIENTS clients, $ADM_USERS users, $ADM_PROJECTS projects, $ADM_DURATION ($label)" \
		-engine "$label" -config "$d/config.json" -server-pid "$pid" "${storepid[@]}" \
		-clients "$ADM_CLIENTS" -users "$ADM_USERS" -projects "$ADM_PROJECTS" -duration "$ADM_DURATION" \
		-max-gpus "$ADM_MAX_GPUS" -max-gpus-per-user "$ADM_MAX_PER_USER" -quota "$ADM_QUOTA"
	stop_pid "$pid"
	drop_pg_db
}

# ---------------------------------------------------------------- measure

# revision describes the tree devgpu was built from.
revision() {
	local rev
	rev=$(cd "$REPO" && git rev-parse --short --verify -q HEAD) || rev="no commit yet"
	if [[ -n $(cd "$REPO" && git status --porcelain 2>/dev/null | head -1) ]]; then
		rev+=" with local changes"
	fi
	echo "$rev"
}

BT=()

# measure KIND NAME LABEL [FLAGS...] -- CMD...: one measurement, shown in the
# report as LABEL. A failing one is logged and recorded by benchtool, and does
# not stop the others.
measure() {
	local kind=$1 name=$2 label=$3
	shift 3
	log "measuring $name: $label"
	"${BT[@]}" "$kind" -name "$name" -label "$label" -out "$RESULTS" "$@" || log "$name: benchtool failed ($?)"
}

main() {
	install_missing
	mkdir -p "$WORK/bin"
	(cd "$REPO" && go build -o "$WORK/bin/benchtool" ./bench/cmd/benchtool)
	BT=("$WORK/bin/benchtool")

	want ssh && setup_ssh
	want slurm && setup_slurm
	if want devgpu || want console; then setup_devgpu; fi
	local load_start
	load_start=$(cut -d' ' -f1-3 /proc/loadavg)

	local ssh_to="ssh -p $SSH_PORT $BENCH_USER@127.0.0.1" srun="srun --gres=gpu:t4:1"
	local shell="devgpu shell${SHELL_WAIT[*]:+ ${SHELL_WAIT[*]}}"
	# Interleaved by measurement, so that every system sees the same noise.
	want devgpu && measure latency devgpu_run_true "devgpu run -- true" -n "$N" -- "${DEVGPU[@]}" run -- true
	want slurm && measure latency srun_true "$srun true" -n "$N" -- "${SRUN[@]}" true
	want ssh && measure latency ssh_true "$ssh_to true" -n "$N" -- "${SSH[@]}" bench true

	want devgpu && measure prompt devgpu_shell_prompt "$shell" -n "$PROMPT_N" -- "${DEVGPU[@]}" shell "${SHELL_WAIT[@]}"
	want slurm && measure prompt srun_pty_prompt "$srun --pty bash" -n "$PROMPT_N" -- "${SRUN[@]}" --pty bash
	want ssh && measure prompt ssh_pty_prompt "$ssh_to -tt" -n "$PROMPT_N" -- "${SSH[@]}" -tt bench

	if want devgpu || want console; then measure keystroke devgpu_shell_keystroke "$shell" -n "$KEYS" -- "${DEVGPU[@]}" shell "${SHELL_WAIT[@]}"; fi
	want console && measure_console
	want ssh && measure keystroke ssh_keystroke "$ssh_to -tt" -n "$KEYS" -- "${SSH[@]}" -tt bench
	want slurm && measure keystroke srun_keystroke "$srun --pty bash" -n "$KEYS" -- "${SRUN[@]}" --pty bash

	want devgpu && measure concurrent devgpu_run_wait_concurrent "devgpu run --wait -- true" \
		-jobs "$JOBS" -workers "$WORKERS" -- "${DEVGPU[@]}" run --wait -- true
	want slurm && measure concurrent srun_concurrent "$srun true" \
		-jobs "$JOBS" -workers "$WORKERS" -- "${SRUN[@]}" true

	want devgpu && measure throughput devgpu_run_bulk "devgpu run -- head -c $BYTES /dev/zero" \
		-n "$BULK_N" -expect-bytes "$BYTES" -- "${DEVGPU[@]}" run -- head -c "$BYTES" /dev/zero
	want ssh && measure throughput ssh_bulk "$ssh_to 'head -c $BYTES /dev/zero'" \
		-n "$BULK_N" -expect-bytes "$BYTES" -- "${SSH[@]}" bench "head -c $BYTES /dev/zero"
	# (srun's output path runs at about 25 MB/s here, 45 s per GiB: not measured.)

	# Admissions last, each engine on a server of its own (16 GPUs, caps).
	if want admissions; then
		devgpu_bin
		local engine
		for engine in ${ADM_ENGINES//,/ }; do
			measure_admissions "$engine"
		done
	fi

	local report=$WORK/report.md
	{
		echo "## devgpu vs OpenSSH vs Slurm — $(date -u +%Y-%m-%dT%H:%MZ)"
		echo
		# shellcheck disable=SC1091
		echo "Host: $(hostname -s), $(nproc) cores, $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")." \
			"Peers: $(ssh -V 2>&1 | cut -d, -f1), Slurm $(srun --version 2>/dev/null | awk '{print $2}')." \
			"devgpu at $(revision)."
		if want console && [[ -z $(console_missing) ]]; then
			echo "Browser terminal: $("$CHROMIUM" --version 2>/dev/null | head -1) headless, driven by playwright-core from Node $(node --version), keys in $CONSOLE_MODE mode."
		fi
		echo "Runs: latency $N, prompt $PROMPT_N, keystrokes $KEYS, $JOBS jobs from $WORKERS submitters, $BULK_N × $BYTES;" \
			"admissions: $ADM_CLIENTS clients for $ADM_DURATION on --gpus $ADM_GPUS ($ADM_ENGINES)." \
			"Load average at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
		echo
		"${BT[@]}" report -in "$RESULTS"
		if ((${#CONSOLE_FAILED[@]})); then
			echo
			echo "**Console section failed:** $(joined "${CONSOLE_FAILED[@]}"); the log above the report says why."
		fi
	} >"$report"
	cat "$report"
	if [[ -n $REPORT_FILE ]]; then
		cp "$report" "$REPORT_FILE"
		log "report written to $REPORT_FILE"
	fi
	((${#CONSOLE_FAILED[@]} == 0)) || die "the console section failed: $(joined "${CONSOLE_FAILED[@]}")"
}

main
