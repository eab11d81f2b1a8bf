#!/usr/bin/env bash
# cluster.sh - a kwok cluster for scale tests: etcd + kube-apiserver + kube-scheduler v1.37.2 and kwok,
# which fakes as many GPU nodes as a test wants. The real scheduler places Pods on the fake nodes; kwok
# marks placed Pods Running, but no container ever runs (use test/k8s for sessions that must run).
#
# Usage:  cluster.sh build                    # kwok into the cache; kube-apiserver/-scheduler from test/k8s's cache
#         cluster.sh up                       # (re)start from scratch; prints the export line
#         cluster.sh nodes N GPUS REGION...   # N fake nodes with nvidia.com/gpu: GPUS, spread over the regions
#         cluster.sh down                     # stop only what `up` started
#         cluster.sh status | env
#         cluster.sh kubectl ARGS...          # kubectl (test/k8s's, else the PATH's) against this cluster
# Env:    DEVGPU_KWOK_WORK (default /tmp/devgpu-kwok), DEVGPU_KWOK_CACHE (default /var/cache/devgpu/kwok),
#         DEVGPU_KWOK_K8S_BIN (where kube-apiserver and kube-scheduler are; default: test/k8s/cluster.sh paths),
#         DEVGPU_KWOK_PRODUCT (the nodes' nvidia.com/gpu.product, default NVIDIA-A100-SXM4-80GB).
# Ports:  apiserver 127.0.0.1:26443, etcd 23890/23900, kwok 10350: apart from test/k8s's
#         (16443, 23790/23800, 10250, 10248), so both clusters can run on one host.
# Needs:  root (the cache lives in /var/cache), etcd (apt etcd-server), openssl, curl, Go >= 1.26.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${DEVGPU_KWOK_WORK:-/tmp/devgpu-kwok}
KWOK_VERSION=v0.8.0
KWOK_CACHE=${DEVGPU_KWOK_CACHE:-/var/cache/devgpu/kwok}
# The key is the tools module: a new kwok version (or a changed dependency) builds a new binary.
KWOK_KEY=$KWOK_VERSION-$(sha256sum "$HERE/kwokbuild/go.mod" | cut -c1-12)
KWOK_BIN=$KWOK_CACHE/$KWOK_KEY/bin
PRODUCT=${DEVGPU_KWOK_PRODUCT:-NVIDIA-A100-SXM4-80GB}
API_PORT=26443
ETCD_CLIENT=23890
ETCD_PEER=23900
KWOK_PORT=10350
APISERVER=https://127.0.0.1:$API_PORT
export KUBECONFIG=$W/admin.kubeconfig
export KUBECACHEDIR=$W/kubecache   # keep kubectl's cache out of ~/.kube

log() { echo "[$(date +%T)] kwok: $*" >&2; }
die() { echo "kwok cluster: $*" >&2; exit 1; }

# k8sbin prints the directory of test/k8s's cached kube-apiserver and kube-scheduler (the one its
# current sources build), or nothing while they are not built. DEVGPU_KWOK_K8S_BIN overrides it.
k8sbin() {
  local d
  if [ -n "${DEVGPU_KWOK_K8S_BIN:-}" ]; then
    d=$DEVGPU_KWOK_K8S_BIN
  else
    d=$("$ROOT/test/k8s/cluster.sh" paths 2>/dev/null | sed -n 's/^BIN=//p')
  fi
  [ -n "$d" ] && [ -x "$d/kube-apiserver" ] && [ -x "$d/kube-scheduler" ] && echo "$d"
  return 0
}

kubectl_() {
  local b
  b=$(k8sbin)
  if [ -n "$b" ] && [ -x "$b/kubectl" ]; then "$b/kubectl" "$@"; else kubectl "$@"; fi
}

deps() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v setsid >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
      die "could not install ${need[*]}; install them with apt-get and run again."
  fi
}

# ---------------------------------------------------------------- build
build() {
  deps
  if [ ! -x "$KWOK_BIN/kwok" ]; then
    local s=$SECONDS tmp
    mkdir -p "$KWOK_CACHE"
    tmp=$(mktemp -d "$KWOK_CACHE/.build-XXXXXX") && chmod 755 "$tmp"
    # Build into a temporary directory and rename it, so a cut build never looks like a cached one.
    (cd "$HERE/kwokbuild" && go build -trimpath -ldflags="-s -w" -o "$tmp/bin/kwok" sigs.k8s.io/kwok/cmd/kwok) ||
      { rm -rf "$tmp"; die "building kwok $KWOK_VERSION failed (see above); the Go module proxy must be reachable."; }
    mkdir -p "$(dirname "$KWOK_BIN")"
    mv -T "$tmp" "$KWOK_CACHE/$KWOK_KEY" 2>/dev/null || rm -rf "$tmp"   # another build won the race: keep its binary
    log "built kwok $KWOK_VERSION in $((SECONDS - s)) s into $KWOK_BIN"
  fi
  if [ -z "$(k8sbin)" ]; then
    log "kube-apiserver and kube-scheduler are not cached yet: test/k8s/cluster.sh build"
    "$ROOT/test/k8s/cluster.sh" build
    [ -n "$(k8sbin)" ] || die "test/k8s/cluster.sh build left no kube-apiserver and kube-scheduler where its paths command says; see its output above."
  fi
}

# ---------------------------------------------------------------- processes
pidfile() { echo "$W/pids/$1.pid"; }
alive() { [ -e /proc/$1 ] && [ "$(awk '{print $3}' /proc/$1/stat 2>/dev/null)" != Z ]; }   # a zombie counts as dead
running() { local f; f=$(pidfile "$1"); [ -f "$f" ] && alive "$(cat "$f")"; }
start() { # name cmd...: its own session, so it never gets our terminal's signals
  local n=$1; shift
  mkdir -p "$W/logs" "$W/pids"
  setsid "$@" >"$W/logs/$n.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$n")"
  log "started $n (pid $!)"
}
stop_one() { # name: TERM, then KILL after 15 s
  local n=$1 f p i
  f=$(pidfile "$n"); [ -f "$f" ] || return 0
  p=$(cat "$f")
  if alive "$p"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$p" || break; sleep 0.1; done
    alive "$p" && { log "$n: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; }
    log "stopped $n (pid $p)"
  fi
  rm -f "$f"
}
waitfor() { # seconds description command...
  local t=$1 d=$2 i; shift 2
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timeout after $t s waiting for $d; logs in $W/logs"; return 1
}
portfree() { ! (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; }

pki() {
  local P=$W/pki
  [ -f "$P/done" ] && return 0
  rm -rf "$P"; mkdir -p "$P"
  (
    cd "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=devgpu-kwok-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,IP:10.97.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
    rm -f apiserver.csr apiserver.ext
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Bootstrap RBAC knows these users: admin is system:masters; the scheduler has its own role.
    printf '%s\n' "$(openssl rand -hex 16),admin,admin,\"system:masters\"" "$(openssl rand -hex 16),system:kube-scheduler,sched" >tokens.csv
    chmod 600 tokens.csv ca.key apiserver.key sa.key
    touch done
  )
}
kubeconfig() { # file token
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kwok, cluster: {server: "$APISERVER", certificate-authority: "$W/pki/ca.crt"}}]
users: [{name: u, user: {token: "$2"}}]
contexts: [{name: kwok, context: {cluster: kwok, user: u}}]
current-context: kwok
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------- up / down
up() {
  [ "$(id -u)" = 0 ] || die "must run as root (its cache lives in /var/cache); run it with sudo."
  down >/dev/null 2>&1 || true
  local t0=$SECONDS B P=$W/pki p
  build
  B=$(k8sbin)
  for p in $API_PORT $ETCD_CLIENT $ETCD_PEER $KWOK_PORT; do
    portfree $p || die "port $p on 127.0.0.1 is taken by a process this script did not start; stop it and run up again."
  done
  mkdir -p "$W"
  rm -rf "$W/etcd" "$W/logs"
  pki
  start etcd etcd --name kwok --data-dir "$W/etcd" \
    --listen-client-urls http://127.0.0.1:$ETCD_CLIENT --advertise-client-urls http://127.0.0.1:$ETCD_CLIENT \
    --listen-peer-urls http://127.0.0.1:$ETCD_PEER --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER \
    --initial-cluster kwok=http://127.0.0.1:$ETCD_PEER --logger=zap --log-level warn
  # --watch-cache=false: the watch cache serves client-go's streaming lists (WatchListClient, on by
  # default) only on an etcd with RequestWatchProgress, which Debian's 3.4.23 lacks; it failed every
  # such watch, and kwok's informers fell back to relisting with backoff, which delayed its Pod changes
  # by seconds. Without the cache, watches go to etcd, which serves them.
  # A fake cluster needs no controller-manager: up creates what it would (the default ServiceAccounts)
  # and nodes removes the not-ready taint it would remove.
  start kube-apiserver "$B/kube-apiserver" --etcd-servers=http://127.0.0.1:$ETCD_CLIENT \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$API_PORT --endpoint-reconciler-type=none \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
    --service-account-signing-key-file="$P/sa.key" --token-auth-file="$P/tokens.csv" \
    --authorization-mode=RBAC --service-cluster-ip-range=10.97.0.0/24 --allow-privileged=true \
    --max-requests-inflight=1000 --max-mutating-requests-inflight=500 --watch-cache=false
  kubeconfig "$W/admin.kubeconfig" "$(sed -n 's/^\([^,]*\),admin,.*/\1/p' "$P/tokens.csv")"
  kubeconfig "$W/sched.kubeconfig" "$(sed -n 's/^\([^,]*\),system:kube-scheduler,.*/\1/p' "$P/tokens.csv")"
  waitfor 60 kube-apiserver kubectl_ get --raw /readyz || exit 1
  log "kube-apiserver ready after $((SECONDS - t0)) s"
  start kube-scheduler "$B/kube-scheduler" --kubeconfig="$W/sched.kubeconfig" \
    --authentication-kubeconfig="$W/sched.kubeconfig" --authorization-kubeconfig="$W/sched.kubeconfig" \
    --leader-elect=false --secure-port=0 --kube-api-qps=500 --kube-api-burst=1000
  start kwok "$KWOK_BIN/kwok" --kubeconfig="$W/admin.kubeconfig" --config="$HERE/kwok.yaml" \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --node-port=$KWOK_PORT --server-address=127.0.0.1:$KWOK_PORT --cidr=10.98.0.0/16 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key"
  kubectl_ create namespace devgpu >/dev/null
  kubectl_ create serviceaccount default >/dev/null
  kubectl_ -n devgpu create serviceaccount default >/dev/null
  waitfor 30 kube-scheduler running kube-scheduler || exit 1
  waitfor 30 kwok bash -c "kubectl_ get --raw /readyz >/dev/null && [ -e /proc/$(cat "$(pidfile kwok)") ]" || exit 1
  log "cluster up in $((SECONDS - t0)) s"
  env_
}

down() {
  set +e   # best effort: every step runs even if an earlier one fails
  stop_one kwok & stop_one kube-scheduler & wait
  stop_one kube-apiserver   # before etcd: an apiserver whose etcd went first hangs until SIGKILL
  stop_one etcd
  rm -rf "$W/etcd"
  log "down"
  set -e
}

# ---------------------------------------------------------------- nodes
# nodes N GPUS REGION...: fake nodes kwok-<region>-<i> (the i-th goes to region i mod the number of
# regions), each with nvidia.com/gpu: GPUS, nvidia.com/gpu.product=$PRODUCT and
# topology.kubernetes.io/region=<region>, Ready and schedulable when this returns. Existing nodes of the
# same name keep their status; delete them first to change it.
nodes() {
  [ $# -ge 3 ] || die "usage: cluster.sh nodes N GPUS REGION..."
  local n=$1 gpus=$2 i r name; shift 2
  local regions=("$@") f=$W/nodes.yaml
  : >"$f"
  for ((i = 0; i < n; i++)); do
    r=${regions[$((i % ${#regions[@]}))]}
    name=$(printf 'kwok-%s-%03d' "$r" "$i")
    cat >>"$f" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations: {kwok.x-k8s.io/node: fake}
  labels:
    type: kwok
    kubernetes.io/hostname: $name
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $PRODUCT
    topology.kubernetes.io/region: $r
status:
  allocatable: {cpu: "64", memory: 512Gi, pods: "110", nvidia.com/gpu: "$gpus"}
  capacity: {cpu: "64", memory: 512Gi, pods: "110", nvidia.com/gpu: "$gpus"}
EOF
  done
  kubectl_ apply -f "$f" >/dev/null
  # Without a controller-manager, nothing removes the taint the apiserver puts on new nodes.
  kubectl_ taint nodes -l type=kwok node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
  waitfor 120 "$n Ready kwok nodes" bash -c \
    "[ \$(kubectl_ get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -cx True) -ge $n ]" || exit 1
  log "$n nodes Ready with nvidia.com/gpu: $gpus in ${regions[*]}"
}

env_() { echo "export KUBECONFIG=$W/admin.kubeconfig KUBECACHEDIR=$W/kubecache"; }

status() {
  for n in etcd kube-apiserver kube-scheduler kwok; do
    if running $n; then echo "$n: running (pid $(cat "$(pidfile $n)"))"; else echo "$n: stopped"; fi
  done
  running kube-apiserver && kubectl_ get nodes -l type=kwok --no-headers 2>/dev/null | wc -l | sed 's/^/kwok nodes: /' || true
}

export -f kubectl_ k8sbin
export ROOT
case ${1:-} in
  build) build ;;
  up) up ;;
  down | stop) down ;;
  nodes) shift; nodes "$@" ;;
  status) status ;;
  env) env_ ;;
  kubectl) shift; kubectl_ "$@" ;;
  *) echo "usage: $0 build|up|down|nodes N GPUS REGION...|status|env|kubectl ARGS..." >&2; exit 2 ;;
esac
