#!/usr/bin/env bash
# kube.sh — time to a shell prompt on the kube runtime, against kubectl on the
# same cluster (issue 11):
#
#   cold: `devgpu shell` (no warm pool: a new Pod per shell) against
#         `kubectl run --rm -it --restart=Never` of the same image with the same
#         `nvidia.com/gpu: 1` limit                        target ≤ 1.0×
#   warm: `devgpu shell` from a warm pool of one ready Pod against
#         `kubectl exec -it` into a running GPU Pod         target ≤ 1.5×
#
# It brings up the project's test cluster (test/k8s/cluster.sh up, with the
# agent image built from this tree), starts `devgpu server --dev` on the
# node's address (Pods dial back to it; --dev serves TLS there and the kube
# backend trusts its CA by default), and times each command on a PTY with
# `benchtool prompt` until a typed command has run. The two commands of a
# comparison run alternately, one run each in turn (and in swapped order
# every other round), so both see the same noise. The first round of each
# comparison is a warm-up and not recorded. Then it takes the cluster down.
#
# `kubectl run` goes through a two-line wrapper that gives each Pod a unique
# name (sh + date: a few ms, counted against kubectl).
#
# usage: sudo bench/kube.sh [REPORT.md]
# Environment: BENCH_KUBE_N=20 measured runs per command, DEVGPU_BIN=/path/to/devgpu,
#              BENCH_KEEP_CLUSTER=1 leaves the cluster up, BENCH_KEEP=1 keeps the work dir
set -euo pipefail

REPORT_FILE=${1:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_KUBE_N:-20}
NS=devgpu-bench
IMAGE=k8s.local/busybox:1 # cluster.sh imports it; the tag is not :latest, so nothing pulls
CLUSTER=$REPO/test/k8s/cluster.sh
AGENT_IMAGE=devgpu.local/agent:dev # imported into the node by cluster.sh up
LOCK=/run/devgpu-k8s.lock # internal/testutil/kcluster's: one user of the cluster at a time
WORK=$(mktemp -d /tmp/dgkube.XXXXXX)
SERVER_PID=
CLUSTER_UP=
KUBECTL=

log() { echo "[kube $(date +%H:%M:%S)] $*" >&2; }
die() { echo "kube.sh: $*" >&2; exit 1; }

cleanup() {
	local rc=$?
	set +eu
	if [[ -n $SERVER_PID ]]; then
		# Ready sessions outlive a server on purpose: end the pool's first.
		"$DEVGPU" admin pool set default --gpu t4 --size 0 >/dev/null 2>&1
		kill "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null
	fi
	if [[ $rc != 0 && -f $WORK/server.log ]]; then
		echo "---- last lines of the server log ($WORK/server.log) ----" >&2
		tail -n 40 "$WORK/server.log" >&2
	fi
	if [[ $rc != 0 && -n $CLUSTER_UP && -n $KUBECTL ]]; then
		echo "---- Pods and events in $NS ----" >&2
		"$KUBECTL" -n "$NS" get pods -o wide >&2
		"$KUBECTL" -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 >&2
	fi
	if [[ -n $CLUSTER_UP ]]; then
		if [[ -n ${BENCH_KEEP_CLUSTER:-} ]]; then
			log "leaving the cluster up (BENCH_KEEP_CLUSTER); $("$CLUSTER" env 9>&-)"
			"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1
		else
			"$CLUSTER" down 9>&- >"$WORK/cluster-down.log" 2>&1 || log "cluster.sh down failed; see $WORK/cluster-down.log"
		fi
	fi
	if [[ -n ${BENCH_KEEP:-} || $rc != 0 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# waitfor SECONDS WHAT CMD...: poll CMD until it succeeds or the deadline passes.
waitfor() {
	local t=$1 what=$2 end
	shift 2
	end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || die "timed out after ${t}s waiting for $what."
		sleep 0.1
	done
}

[[ $(id -u) == 0 ]] || die "it needs root (the test cluster runs containerd and the kubelet); run it with sudo."
command -v jq >/dev/null || die "it needs jq to sum up the runs: apt-get install jq."
"$CLUSTER" cached || die "the Kubernetes binaries are not built; run \`sudo test/k8s/cluster.sh build\` once (10-15 minutes)."

# The cluster's ports are fixed: wait for any test binary using it to finish.
exec 9>"$LOCK"
if ! flock -n 9; then
	log "waiting for another user of the test cluster to release $LOCK"
	flock -w 1800 9 || die "another user held the test cluster ($LOCK) for 30 minutes; wait for it or stop it."
fi

cd "$REPO"
log "building devgpu, the static agent, its image and benchtool"
DEVGPU=${DEVGPU_BIN:-$WORK/devgpu}
[[ -n ${DEVGPU_BIN:-} ]] || go build -o "$DEVGPU" ./cmd/devgpu
CGO_ENABLED=0 go build -tags agentonly -o "$WORK/devgpu-agent" ./cmd/devgpu
go run ./scripts/agentimage -agent "$WORK/devgpu-agent" -ref "$AGENT_IMAGE" -out "$WORK/agent-image.tar" >/dev/null
go build -o "$WORK/benchtool" ./bench/cmd/benchtool

log "starting the test cluster (test/k8s/cluster.sh up)"
CLUSTER_UP=1
DEVGPU_AGENT_IMAGE_TAR=$WORK/agent-image.tar "$CLUSTER" up 9>&- >"$WORK/cluster-up.log" 2>&1 ||
	{ tail -n 20 "$WORK/cluster-up.log" >&2; die "cluster.sh up failed; its log: $WORK/cluster-up.log"; }
declare -A K
while IFS='=' read -r k v; do K[$k]=$v; done < <("$CLUSTER" paths 9>&-)
export KUBECONFIG=${K[KUBECONFIG]} KUBECACHEDIR=${K[KUBECACHEDIR]}
KUBECTL=${K[BIN]}/kubectl
NODE_IP=${K[NODE_IP]}

"$KUBECTL" create namespace "$NS" >/dev/null
# Pods are refused until the controller manager has made the namespace's default ServiceAccount.
waitfor 60 "the default ServiceAccount in $NS" "$KUBECTL" -n "$NS" get serviceaccount default

port=18310
while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 1)); done
ADDR=$NODE_IP:$port
cat >"$WORK/server.json" <<JSON
{"backends": [{"name": "cluster", "runtime": "kube", "kube": {
  "kubeconfig": "$KUBECONFIG", "namespace": "$NS", "gpu_types": {"Tesla-T4": "t4"},
  "agent_image": "$AGENT_IMAGE", "image": "$IMAGE", "link_url": "https://$ADDR"}}]}
JSON
export DEVGPU_CONFIG=$WORK/config.json DEVGPU_URL= DEVGPU_TOKEN=
log "devgpu server --dev on $ADDR"
"$DEVGPU" server --dev --data "$WORK/data" --listen "$ADDR" --config "$WORK/server.json" 9>&- >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
waitfor 60 "the server to answer https://$ADDR/healthz" curl -fsSk "https://$ADDR/healthz"
waitfor 60 "the cluster's t4 capacity to reach the server" sh -c "'$DEVGPU' gpus | grep -q t4"
"$DEVGPU" run -- true || die "devgpu run -- true failed on the kube runtime; see $WORK/server.log."

# kubectl run, a unique Pod name per run, the same image and GPU limit as a devgpu session's Pod.
cat >"$WORK/kubectl-run" <<SH
#!/bin/sh
name=bench-\$(date +%s%N)
exec "$KUBECTL" -n $NS run "\$name" --rm -i -t --restart=Never --image $IMAGE --image-pull-policy=IfNotPresent \\
  --override-type=strategic --overrides "{\"spec\":{\"containers\":[{\"name\":\"\$name\",\"resources\":{\"limits\":{\"nvidia.com/gpu\":\"1\"}}}]}}"
SH
chmod 755 "$WORK/kubectl-run"

# prompt NAME CMD...: one timed run of CMD, appended to WORK/NAME.jsonl.
prompt() {
	local name=$1
	shift
	"$WORK/benchtool" prompt -name "$name" -n 1 -warmup 0 -timeout 120s -out "$WORK/$name.jsonl" -- "$@" 2>>"$WORK/benchtool.log" >/dev/null
}

# settled PODS: the namespace holds exactly PODS Pods, all running and none
# being deleted (so no Pod of an earlier run still starts or stops).
settled() {
	[[ $("$KUBECTL" -n "$NS" get pods -o json | jq --argjson want "$1" '(.items | length) as $n | $n == $want and ([.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")] | length) == $n') == true ]]
}

# compare A_NAME A_CMD B_NAME B_CMD SETTLE: N+1 rounds, one run of each per
# round, the first round unrecorded, B first in odd rounds. SETTLE, a
# command, runs untimed before every run: it waits until what the last run
# left behind (a Pod ending, a warm pool refilling) is done, so neither
# command is timed while the other's aftermath loads the machine.
compare() {
	local a=$1 acmd=$2 b=$3 bcmd=$4 settle=$5 i
	for ((i = 0; i <= N; i++)); do
		local sa=$a sb=$b
		((i > 0)) || { sa=warmup_$a sb=warmup_$b; }
		if ((i % 2)); then
			$settle && prompt "$sb" $bcmd
			$settle && prompt "$sa" $acmd
		else
			$settle && prompt "$sa" $acmd
			$settle && prompt "$sb" $bcmd
		fi
		log "  round $i/$N"
	done
}

log "cold: devgpu shell vs kubectl run --rm -it, $N runs each"
cold_settle() { waitfor 120 "the last run's Pod to go" settled 0; }
compare cold_devgpu "$DEVGPU shell" cold_kubectl "$WORK/kubectl-run" cold_settle

log "warm: a GPU Pod for kubectl exec, and a warm pool of 1"
"$KUBECTL" -n "$NS" run bench-target --restart=Never --image "$IMAGE" --image-pull-policy=IfNotPresent \
	--override-type=strategic --overrides '{"spec":{"containers":[{"name":"bench-target","resources":{"limits":{"nvidia.com/gpu":"1"}}}]}}' \
	-- sleep 1000000 >/dev/null
"$KUBECTL" -n "$NS" wait --for=condition=Ready pod/bench-target --timeout=120s >/dev/null
"$DEVGPU" admin pool set default --gpu t4 --size 1 >/dev/null 2>&1
pool_ready() { [[ $("$DEVGPU" admin pool list --json | jq '[.[] | select(.project == "default" and .gpu_type == "t4")][0].ready') == 1 ]]; }
# The pool refills after each claim: wait for the ready session and for the
# Pods to be only bench-target and the ready one.
warm_settle() {
	waitfor 120 "the warm pool to hold a ready session again" pool_ready
	waitfor 120 "the claimed session's Pod to go" settled 2
}
claimed() { curl -fsSk "https://$ADDR/metrics" | awk '/^devgpu_admissions_total\{outcome="claimed"/ {s += $2} END {print s + 0}'; }
claimed_before=$(claimed)
compare warm_devgpu "$DEVGPU shell" warm_kubectl "$KUBECTL -n $NS exec -it bench-target -- sh" warm_settle
claimed_after=$(claimed)

# stats NAME: "median p99 n failures last_error" over the recorded runs (benchtool's percentiles).
stats() {
	jq -rs '
		def pct($q): . as $s | length as $n
			| if $n == 0 then null elif $n == 1 then $s[0]
			  else ($q * ($n - 1)) as $p | ($p | floor) as $lo | ($p | ceil) as $hi
			  | $s[$lo] + ($s[$hi] - $s[$lo]) * ($p - $lo) end;
		([.[].samples_ms // [] | .[]] | sort) as $s
		| [($s | pct(0.5)), ($s | pct(0.99)), ($s | length), (map(.failures) | add),
		   ([.[].last_error // empty] | last // "")] | @tsv' "$WORK/$1.jsonl"
}
fmt() { awk -v x="$1" 'BEGIN { if (x == "") print "n/a"; else printf "%.0f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f×", a / b }'; }
# met RATIO RATIO TARGET: whether both ratios are within the target.
met() { awk -v m="${1%×}" -v p="${2%×}" -v t="$3" 'BEGIN { if (m == "n/a" || p == "n/a") print "n/a"; else if (m <= t && p <= t) print "yes"; else if (m <= t) print "median only"; else print "no" }'; }

rows=() notes=()
row() { # label devgpu-name kubectl-name kubectl-label target
	local dm dp dn df de km kp kn kf ke
	IFS=$'\t' read -r dm dp dn df de < <(stats "$2")
	IFS=$'\t' read -r km kp kn kf ke < <(stats "$3")
	local rm rp
	rm=$(ratio "$dm" "$km") rp=$(ratio "$dp" "$kp")
	rows+=("| $1 | $(fmt "$dm") / $(fmt "$dp") | $4 | $(fmt "$km") / $(fmt "$kp") | $rm | $rp | ≤ $5× | $(met "$rm" "$rp" "$5") | $dn+$df / $kn+$kf |")
	[[ -z $de ]] || notes+=("- $2: $df failed runs; last error: $de")
	[[ -z $ke ]] || notes+=("- $3: $kf failed runs; last error: $ke")
}
row "cold (no pool)" cold_devgpu cold_kubectl '`kubectl run --rm -it`' 1.0
row "warm pool of 1" warm_devgpu warm_kubectl '`kubectl exec -it`' 1.5

# breakdown: where the cold starts went, from containerd's CRI log (ms
# timestamps of RunPodSandbox, CreateContainer and StartContainer per Pod)
# and the server's log (request, Pod created, agent linked): medians over
# every devgpu session Pod of this run and every `kubectl run` Pod.
breakdown() {
	local ctrd=${K[WORK]}/logs/containerd.log
	[[ -f $ctrd ]] || return 0
	awk '
		function ts(s,  a) { split(substr(s, index(s, "T") + 1, 15), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
		function got(skip) { return substr($0, RSTART + skip, RLENGTH - skip) }
		FNR == 1 { file++ }
		file == 1 && /msg="RunPodSandbox for/ {
			match($0, /Name:[^,]*/); pod = got(5)
			if (/returns sandbox id/) { match($0, /sandbox id \\"[0-9a-f]*/); sbpod[got(13)] = pod; sbdone[pod] = ts($1) } else sbstart[pod] = ts($1)
		}
		file == 1 && /msg="CreateContainer within sandbox/ {
			match($0, /sandbox \\"[0-9a-f]*/); pod = sbpod[got(10)]
			if (/returns container id/) { match($0, /container id \\"[0-9a-f]*/); cid = got(15); cpod[cid] = pod; cidx[cid] = n[pod] }
			else create[pod, ++n[pod]] = ts($1)
		}
		file == 1 && /msg="StartContainer for/ && /returns successfully/ { match($0, /for \\"[0-9a-f]*/); cid = got(6); started[cpod[cid], cidx[cid]] = ts($1) }
		file == 2 && /msg="(session starting|session Pod created|agent linked)"/ {
			match($0, /session_id=[a-z0-9]*/); pod = "devgpu-" got(11)
			if (/session starting/) req[pod] = ts($1); else if (/Pod created/) made[pod] = ts($1); else linked[pod] = ts($1)
		}
		function add(k, v) { vals[k] = vals[k] " " sprintf("%.0f", 1000 * v) }
		END {
			for (pod in sbstart) {
				k = n[pod]
				if (pod ~ /^devgpu-/ && k == 2 && (pod in linked)) g = "devgpu"; else if (pod ~ /^bench-[0-9]/ && k == 1) g = "kubectl"; else continue
				add(g ":sandbox", sbdone[pod] - sbstart[pod])
				add(g ":main", started[pod, k] - create[pod, k])
				if (g == "devgpu") {
					add(g ":api", made[pod] - req[pod])
					add(g ":sched", sbstart[pod] - made[pod])
					add(g ":init", started[pod, 1] - create[pod, 1])
					add(g ":initexit", create[pod, 2] - started[pod, 1])
					add(g ":link", linked[pod] - started[pod, 2])
				}
			}
			for (k in vals) { m = split(substr(vals[k], 2), x, " "); asort(x); med[k] = x[int((m + 1) / 2)]; cnt[k] = m }
			split("api=server: admission, Secret, NetworkPolicy and Pod created|sched=Pod created to sandbox requested (scheduler, kubelet)|sandbox=sandbox (pause container, CNI)|init=init container created and started (copies the agent)|initexit=init container started to next container created (the kubelet notices it exited)|main=main container created and started|link=main container started to agent linked (TLS WebSocket)", rows, "|")
			printf "| phase (median ms) | devgpu Pod (n=%d) | kubectl run Pod (n=%d) |\n| --- | ---: | ---: |\n", cnt["devgpu:sandbox"], cnt["kubectl:sandbox"]
			for (i = 1; i in rows; i++) {
				split(rows[i], r, "=")
				printf "| %s | %s | %s |\n", r[2], (("devgpu:" r[1]) in med) ? med["devgpu:" r[1]] : "—", (("kubectl:" r[1]) in med) ? med["kubectl:" r[1]] : "—"
			}
		}' "$ctrd" "$WORK/server.log"
}

mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
report=$(
	echo "Time to a shell prompt on the kube runtime (\`bench/kube.sh\`, BENCH_KUBE_N=$N): spawn on a PTY until a typed"
	echo "\`echo \$((a+b))\` has run (\`benchtool prompt\`), alternating the two commands of a row, one run each in turn, each"
	echo "once the Pods of the last run have gone (and the warm pool has refilled)."
	echo "Machine: $(nproc) cores, $mem; one-node Kubernetes $("$KUBECTL" version -o json 2>/dev/null | jq -r .serverVersion.gitVersion) from test/k8s/cluster.sh, image $IMAGE, nvidia.com/gpu: 1."
	echo
	echo "| runs | \`devgpu shell\` median / p99 (ms) | kubectl | kubectl median / p99 (ms) | median ratio | p99 ratio | target | met | runs ok+failed devgpu / kubectl |"
	echo "| --- | ---: | --- | ---: | ---: | ---: | --- | --- | --- |"
	printf '%s\n' "${rows[@]}"
	echo
	echo "Warm-pool shells claimed a ready session: $((claimed_after - claimed_before)) of $((N + 1)) (server metric devgpu_admissions_total{outcome=\"claimed\"})."
	echo "\`kubectl run\` goes through a wrapper (sh + date for a unique Pod name): a few ms counted against kubectl."
	[[ ${#notes[@]} == 0 ]] || printf '%s\n' "${notes[@]}"
	echo
	echo "Where a cold start goes (containerd's and the server's logs; devgpu includes the warm pool's refills):"
	echo
	breakdown
	echo
	echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
)
echo "$report"
[[ -z $REPORT_FILE ]] || echo "$report" >"$REPORT_FILE"
