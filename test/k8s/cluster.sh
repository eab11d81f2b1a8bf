#!/bin/bash
# cluster.sh - a real single-node Kubernetes v1.37.2 cluster on this host, offline, for devgpu's tests:
#   etcd (Debian) + kube-apiserver + kube-scheduler + kube-controller-manager + kubelet (built from the Go
#   module proxy in ./kbuild) + containerd and runc (Debian) + CNI bridge, images built locally (no registry),
#   and ./fakegpu, a device plugin advertising 4 simulated nvidia.com/gpu (GPU-sim-0..3).
#
# Usage:  cluster.sh build        # build the binaries into the cache if missing (10-15 min cold on 2 cores)
#         cluster.sh up           # (re)start everything; imports $DEVGPU_AGENT_IMAGE_TAR when set
#         cluster.sh import TAR   # import a docker-save image tarball into the node's containerd
#         cluster.sh down         # stop what `up` started and undo its changes to the host
#         cluster.sh proxy-up     # add kube-proxy (iptables mode), for tests that need Services
#         cluster.sh proxy-down   # stop kube-proxy and remove its iptables chains (`down` does too)
#         cluster.sh status | env | paths | cached
# Env:    DEVGPU_K8S_CACHE (default /var/cache/devgpu/k8s): binaries, in <version>-<hash of the sources>/bin
#         DEVGPU_K8S_WORK (default /tmp/devgpu-k8s): the running cluster's state, logs, kubeconfig
# Needs root and the apt packages in deps(). Ports 16443, 23790, 23800, 10250 and 10248 are fixed:
# one cluster per host (internal/testutil/kcluster holds /run/devgpu-k8s.lock while tests use it).
# The recipe and its obstacles were worked out on Debian 12 (Firecracker VM, cgroup v1/v2 hybrid, no systemd,
# no CAP_SYS_RESOURCE); the comments marked "host:" are those workarounds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=v1.37.2
CACHE=${DEVGPU_K8S_CACHE:-/var/cache/devgpu/k8s}
# the cache key: a change to the tools module or to the device plugin builds afresh
KEY=$(cat "$HERE/kbuild/go.mod" "$HERE/fakegpu/main.go" "$HERE/fakegpu/go.mod" "$HERE/fakegpu/go.sum" | sha256sum | cut -c1-12)
BIN=$CACHE/$K8S_VERSION-$KEY/bin
BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl fakegpu"
W=${DEVGPU_K8S_WORK:-/tmp/devgpu-k8s}
POD_CIDR=10.244.0.0/24
POD_GW=10.244.0.1
BR=k8sbr0
GPUS=4
NODE=$(hostname | tr 'A-Z' 'a-z')
NODE_IP=$(ip -4 route get 192.0.2.255 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)
[ -n "$NODE_IP" ] || NODE_IP=$(hostname -I | awk '{print $1}')
APISERVER=https://127.0.0.1:16443
PORTS="16443 23790 23800 10250 10248"
CTRD_SOCK=$W/containerd/containerd.sock
CTR="ctr -a $CTRD_SOCK -n k8s.io"
export KUBECONFIG=$W/admin.kubeconfig
export KUBECACHEDIR=$W/kubecache # keep kubectl's cache out of ~/.kube
KUBECTL=$BIN/kubectl
SYSCTLS="kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward"
KUBELET_CHAINS="KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT" # kubelet_network_linux.go

log() { echo "[$(date +%T)] $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (it runs containerd and the kubelet); run it with sudo."; }

deps() {
  local need=() p
  for p in containerd containernetworking-plugins etcd-server iptables busybox-static gcc libc6-dev openssl bsdutils; do
    dpkg -s $p >/dev/null 2>&1 || need+=($p)
  done
  [ ${#need[@]} -eq 0 ] && return 0
  need_root "installing ${need[*]}"
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    die "could not install ${need[*]} with apt-get; install them by hand."
}

# ---------------------------------------------------------------- build
cached() { local b; for b in $BINARIES; do [ -x $BIN/$b ] || return 1; done; }

build() {
  if cached; then log "binaries cached in $BIN"; return 0; fi
  command -v go >/dev/null || die "building the Kubernetes binaries needs Go >= 1.26 on PATH."
  mkdir -p "$CACHE"
  # build into a temporary directory and rename, so a cache dir is complete or absent
  local tmp t0=$SECONDS s c
  tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # same flags and ldflags as the recipe, so a warm GOCACHE makes this link-only; nodes report v1.37.2
  local LDF="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37"
  export GOWORK=off GOFLAGS=-buildvcs=false
  for c in kubelet kube-controller-manager kube-apiserver kube-scheduler kubectl; do
    s=$SECONDS
    (cd "$HERE/kbuild" && go build -trimpath -ldflags="$LDF" -o $tmp/bin/$c k8s.io/kubernetes/cmd/$c)
    log "built $c in $((SECONDS - s)) s"
  done
  (cd "$HERE/fakegpu" && go build -trimpath -ldflags="-s -w" -o $tmp/bin/fakegpu .)
  mkdir -p "$(dirname $BIN)"
  mv -T $tmp/bin $BIN 2>/dev/null || cached || die "could not move the binaries into $BIN."
  rm -rf "$tmp"; trap - EXIT
  log "built the binaries into $BIN in $((SECONDS - t0)) s"
}

# kube-proxy came after the cache's other binaries: `proxy-up` builds it into the same directory when missing
# there, without changing the cache key (that would rebuild everything). Mostly link-only with a warm GOCACHE.
KUBE_PROXY=$BIN/kube-proxy
build_proxy() {
  [ -x $KUBE_PROXY ] && return 0
  cached || die "build the cluster's binaries first (cluster.sh build)."
  local s=$SECONDS LDF="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
  (cd "$HERE/kbuild" && GOWORK=off GOFLAGS=-buildvcs=false go build -trimpath -ldflags="$LDF" -o $KUBE_PROXY.tmp k8s.io/kubernetes/cmd/kube-proxy)
  mv -f $KUBE_PROXY.tmp $KUBE_PROXY
  log "built kube-proxy into $BIN in $((SECONDS - s)) s"
}

# ---------------------------------------------------------------- images (no registry)
# a `docker save` archive of one directory, reproducible (fixed mtimes and owners), for `ctr images import`
mkimage() { # ref rootfs out.tar entrypoint-json cmd-json
  local ref=$1 rootfs=$2 out=$3 ep=$4 cmd=$5 t lh ch
  t=$(mktemp -d)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf $t/layer.tar .
  lh=$(sha256sum $t/layer.tar | cut -d' ' -f1); mkdir $t/$lh; mv $t/layer.tar $t/$lh/
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$ep" "$cmd" "$lh" > $t/c.json
  ch=$(sha256sum $t/c.json | cut -d' ' -f1); mv $t/c.json $t/$ch.json
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' $ch "$ref" $lh > $t/manifest.json
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C $t -cf "$out" manifest.json $ch.json $lh
  rm -rf $t
}

# k8s.local/pause:1 (the sandbox) and k8s.local/busybox:1; tags are not :latest, so the kubelet never pulls
images() {
  local I=$W/images R
  mkdir -p $I
  [ -f $I/pause.tar ] && [ -f $I/busybox.tar ] && return 0
  cat > $I/pause.c <<'EOF'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void onterm(int s) { (void)s; _exit(0); }
static void onchld(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction t = {.sa_handler = onterm}, c = {.sa_handler = onchld, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &t, 0); sigaction(SIGTERM, &t, 0); sigaction(SIGCHLD, &c, 0);
  for (;;) pause();
}
EOF
  rm -rf $I/rootfs-pause $I/rootfs-busybox
  mkdir -p $I/rootfs-pause
  gcc -Os -static -o $I/rootfs-pause/pause $I/pause.c && strip $I/rootfs-pause/pause
  mkimage k8s.local/pause:1 $I/rootfs-pause $I/pause.tar '["/pause"]' null
  R=$I/rootfs-busybox
  mkdir -p $R/{bin,etc,tmp,proc,sys,dev,root,var/www}
  cp /bin/busybox $R/bin/busybox
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox $R/bin/$a; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > $R/etc/passwd
  printf 'root:x:0:\nnogroup:x:65534:\n' > $R/etc/group
  echo 'hello from pod' > $R/var/www/index.html
  chmod 1777 $R/tmp
  mkimage k8s.local/busybox:1 $R $I/busybox.tar null '["sh"]'
}

import_image() { # tar
  [ -f "$1" ] || die "no image tarball at $1; build it with \`make agent-image\`."
  running containerd || die "the cluster is not up; run \`cluster.sh up\` first."
  $CTR images import "$1" >/dev/null || die "containerd could not import $1; is it a docker-save tarball?"
  log "imported $1"
}

# ---------------------------------------------------------------- helpers
pidfile() { echo $W/pids/$1.pid; }
alive() { [ -e /proc/$1 ] && [ "$(awk '{print $3}' /proc/$1/stat 2>/dev/null)" != Z ]; } # host: no systemd, zombies linger
running() { local f; f=$(pidfile $1); [ -f $f ] && alive $(cat $f); }
start() { # name cmd...   (own session, so it never gets the caller's signals)
  local n=$1; shift
  mkdir -p $W/logs $W/pids
  # close inherited descriptors: a daemon holding the caller's flock of /run/devgpu-k8s.lock would keep it locked
  (
    for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
    exec setsid "$@"
  ) > $W/logs/$n.log 2>&1 < /dev/null &
  echo $! > $(pidfile $n)
}
stop_one() { # name [timeout]
  local n=$1 t=${2:-15} f p i
  f=$(pidfile $n); [ -f $f ] || return 0
  p=$(cat $f)
  if alive $p; then
    kill -TERM $p 2>/dev/null || true
    for ((i = 0; i < t * 10; i++)); do alive $p || break; sleep 0.1; done
    alive $p && { log "$n: SIGKILL"; kill -KILL $p 2>/dev/null || true; }
  fi
  rm -f $f
}
waitfor() { # seconds description command...
  local t=$1 d=$2 i; shift 2
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timeout waiting for $d; logs in $W/logs"; return 1
}
# another cluster (not ours) holds the fixed ports: never touch the host state it depends on
foreign() {
  local p pid ours=" $(cat $W/pids/*.pid 2>/dev/null | tr '\n' ' ') "
  for p in $PORTS; do
    for pid in $(ss -Hltnp "sport = :$p" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2); do
      case "$ours" in *" $pid "*) ;; *) return 0 ;; esac
    done
  done
  return 1
}
kc() { # file user-yaml
  cat > $1 <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$APISERVER", certificate-authority: "$W/pki/ca.crt"}}]
users: [{name: u, user: {$2}}]
contexts: [{name: local, context: {cluster: local, user: u}}]
current-context: local
EOF
}

pki() {
  local P=$W/pki
  [ -f $P/done ] && [ "$(cat $P/done)" = "$NODE $NODE_IP" ] && return 0
  rm -rf $P; mkdir -p $P
  (
    cd $P
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=devgpu-k8s-ca 2>/dev/null
    mk() { # name CN O SAN
      openssl req -newkey rsa:2048 -nodes -keyout $1.key -out $1.csr -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n%s\n' "${4:+subjectAltName=$4}" > $1.ext
      openssl x509 -req -in $1.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $1.crt -days 3650 -extfile $1.ext 2>/dev/null
      rm -f $1.csr $1.ext
    }
    mk apiserver kube-apiserver "" "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    mk apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    mk kubelet system:node:$NODE system:nodes "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE,DNS:localhost"
    openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    printf '%s\n' 'admin-token,admin,admin,"system:masters"' 'kcm-token,system:kube-controller-manager,kcm' 'sched-token,system:kube-scheduler,sched' > tokens.csv
    echo "$NODE $NODE_IP" > done
  )
}

# ---------------------------------------------------------------- up
up() {
  need_root "cluster.sh up"
  foreign && die "another Kubernetes cluster holds one of the ports $PORTS on this host; stop it first (its own \`down\`)."
  down >/dev/null 2>&1 || true
  local t0=$SECONDS P=$W/pki
  deps
  build
  images
  mkdir -p $W/state $W/logs $W/pids
  # remember host state once, so that `down` restores it exactly
  if [ ! -f $W/state/sysctl.orig ]; then
    for s in $SYSCTLS; do echo "$s=$(sysctl -n $s)"; done > $W/state/sysctl.orig
    for d in /var/lib/kubelet /var/lib/kubelet/device-plugins /var/log/containers /run/containerd /var/lib/cni; do
      [ -e $d ] || echo $d; done > $W/state/created-dirs
  fi
  rm -rf $W/etcd $W/kubelet $W/containerd/root $W/containerd/state $W/containerd/runc $W/cni/ipam $W/logs/*
  pki

  start etcd etcd --name default --data-dir $W/etcd --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
    --logger=zap --log-level warn
  # the apiserver stays on loopback; advertising 127.0.0.1 needs --endpoint-reconciler-type=none
  start kube-apiserver $BIN/kube-apiserver --etcd-servers=http://127.0.0.1:23790 --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port=16443 --endpoint-reconciler-type=none \
    --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key --client-ca-file=$P/ca.crt \
    --kubelet-client-certificate=$P/apiserver-kubelet-client.crt --kubelet-client-key=$P/apiserver-kubelet-client.key \
    --kubelet-certificate-authority=$P/ca.crt --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file=$P/sa.pub \
    --service-account-signing-key-file=$P/sa.key --token-auth-file=$P/tokens.csv \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=10.96.0.0/24 --allow-privileged=true
  kc $W/admin.kubeconfig "token: admin-token"
  kc $W/kcm.kubeconfig "token: kcm-token"
  kc $W/sched.kubeconfig "token: sched-token"
  kc $W/kubelet.kubeconfig "client-certificate: $P/kubelet.crt, client-key: $P/kubelet.key"
  waitfor 60 apiserver $KUBECTL get --raw /readyz
  log "apiserver ready after $((SECONDS - t0)) s"
  start kube-scheduler $BIN/kube-scheduler --kubeconfig=$W/sched.kubeconfig --authentication-kubeconfig=$W/sched.kubeconfig \
    --authorization-kubeconfig=$W/sched.kubeconfig --leader-elect=false --secure-port=0
  # it creates the default ServiceAccounts and kube-root-ca.crt and lifts the not-ready taint
  start kube-controller-manager $BIN/kube-controller-manager --kubeconfig=$W/kcm.kubeconfig --leader-elect=false --secure-port=0 \
    --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt --use-service-account-credentials=true \
    --cluster-signing-cert-file=$P/ca.crt --cluster-signing-key-file=$P/ca.key --controllers='*'

  mkdir -p $W/containerd $W/cni/net.d
  cat > $W/containerd/config.toml <<EOF
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.local/pause:1"
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  # host: no CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj to the sandbox's -998; clamp to containerd's own
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$W/containerd/runc"
EOF
  # the host reaches pod IPs through the bridge; no masquerade, no kube-proxy, no DNS
  cat > $W/cni/net.d/10-k8s.conflist <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-net",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$W/cni/ipam"
      }
    }
  ]
}
EOF
  start containerd containerd --config $W/containerd/config.toml
  waitfor 30 containerd $CTR version
  $CTR images import $W/images/pause.tar >/dev/null
  $CTR images import $W/images/busybox.tar >/dev/null
  [ -n "${DEVGPU_AGENT_IMAGE_TAR:-}" ] && import_image "$DEVGPU_AGENT_IMAGE_TAR"
  log "containerd ready, images imported after $((SECONDS - t0)) s"

  mkdir -p $W/kubelet /var/lib/kubelet/device-plugins $W/logs/pods
  # host: cgroup v1 needs failCgroupV1: false; containerd 1.6 lacks the RuntimeConfig RPC, so cgroupDriver
  # is read from here; image GC off, because a deleted local image can never be pulled again
  cat > $W/kubelet/config.yaml <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet.crt
tlsPrivateKeyFile: $P/kubelet.key
containerRuntimeEndpoint: unix://$CTRD_SOCK
imageServiceEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: $W/logs/pods
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
podPidsLimit: -1
maxPods: 110
EOF
  # the kubelet rejects a loopback node IP, so it serves on the host's own address
  start kubelet $BIN/kubelet --config=$W/kubelet/config.yaml --kubeconfig=$W/kubelet.kubeconfig --root-dir=$W/kubelet --cert-dir=$W/kubelet/pki \
    --node-ip=$NODE_IP --hostname-override=$NODE --v=1
  waitfor 120 "node Ready" sh -c "$KUBECTL get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  waitfor 60 "default ServiceAccount" $KUBECTL get sa default
  log "node $NODE Ready after $((SECONDS - t0)) s"
  printf '#!/bin/sh\necho "fake nvidia-smi: visible GPUs: $NVIDIA_VISIBLE_DEVICES"\nls -l /dev/nvidia* 2>/dev/null\n' > $W/nvidia-smi
  chmod 755 $W/nvidia-smi
  start fakegpu $BIN/fakegpu -count $GPUS -nvidia-smi $W/nvidia-smi
  waitfor 60 "nvidia.com/gpu" sh -c "$KUBECTL get node $NODE -o jsonpath='{.status.allocatable.nvidia\.com/gpu}' | grep -qx $GPUS"
  # what GPU Feature Discovery and a cloud provider would set, for the kube runtime's type and region
  $KUBECTL label node $NODE --overwrite nvidia.com/gpu.product=Tesla-T4 topology.kubernetes.io/region=k8s-local >/dev/null
  log "cluster up in $((SECONDS - t0)) s: node $NODE, nvidia.com/gpu: $GPUS"
  env_
}

env_() { echo "export KUBECONFIG=$W/admin.kubeconfig KUBECACHEDIR=$W/kubecache PATH=$BIN:\$PATH"; }
# for programs (internal/testutil/kcluster): one KEY=value a line
paths() {
  printf 'WORK=%s\nBIN=%s\nKUBECONFIG=%s\nKUBECACHEDIR=%s\nNODE=%s\nNODE_IP=%s\nGPUS=%s\n' \
    "$W" "$BIN" "$W/admin.kubeconfig" "$W/kubecache" "$NODE" "$NODE_IP" "$GPUS"
}

status() {
  for n in etcd kube-apiserver kube-scheduler kube-controller-manager containerd kubelet fakegpu; do
    if running $n; then echo "$n: running (pid $(cat $(pidfile $n)))"; else echo "$n: stopped"; fi
  done
  running kube-apiserver && $KUBECTL get nodes -o wide 2>/dev/null || true
}

# ---------------------------------------------------------------- kube-proxy (optional)
# The cluster runs without kube-proxy: tests reach Pods through the bridge. Tests of Services (the Helm
# chart's, e2e/helm_test.go) add it. iptables mode; masqueradeAll, because Pods on one bridge without
# br_netfilter would get a Service's replies from the backend Pod's own address; no sysctl changes
# (conntrack limits and route_localnet stay as they are), so `proxy-down` only has chains to remove.
proxy_up() {
  need_root "cluster.sh proxy-up"
  running kubelet || die "the cluster is not up; run \`cluster.sh up\` first."
  build_proxy
  stop_one kube-proxy
  mkdir -p $W/state
  touch $W/state/kube-proxy # `down` removes its chains
  cat > $W/kube-proxy.yaml <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $W/admin.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
iptables: {masqueradeAll: true, localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
EOF
  start kube-proxy $KUBE_PROXY --config=$W/kube-proxy.yaml --v=1
  waitfor 60 "kube-proxy's first sync" sh -c "curl -sf http://127.0.0.1:10256/healthz"
  log "kube-proxy running (iptables mode)"
}

proxy_down() {
  need_root "cluster.sh proxy-down"
  stop_one kube-proxy
  [ -f $W/state/kube-proxy ] || return 0
  # kube-proxy's own cleanup removes its KUBE-* chains and rules (and only those: not the kubelet's)
  [ -x $KUBE_PROXY ] && { $KUBE_PROXY --cleanup --v=0 >$W/logs/kube-proxy-cleanup.log 2>&1 || true; }
  if iptables-save 2>/dev/null | grep -q -e ':KUBE-SERVICES' -e ':KUBE-SVC-' -e ':KUBE-SEP-'; then
    log "kube-proxy --cleanup left chains behind; see $W/logs/kube-proxy-cleanup.log"; return 1
  fi
  rm -f $W/state/kube-proxy
}

# ---------------------------------------------------------------- down
down() {
  need_root "cluster.sh down"
  set +e +o pipefail # best effort: every step runs even when one fails (a grep with no match must not stop it)
  local t0=$SECONDS host=1
  foreign && { host=0; log "another cluster holds the ports; leaving the host's bridge, iptables and cgroups alone"; }
  # 1. let the kubelet tear pods down properly (CNI DEL, unmounts, cgroups)
  if running kube-apiserver && running kubelet; then
    $KUBECTL delete pods --all -A --grace-period=1 --timeout=60s --wait=true >/dev/null 2>&1
  fi
  stop_one fakegpu
  [ $host = 1 ] && proxy_down
  stop_one kube-proxy
  stop_one kubelet
  # 2. what the kubelet could not clean up: kill tasks, delete containers
  if running containerd; then
    local id
    for id in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL $id >/dev/null 2>&1; done
    for id in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks rm -f $id >/dev/null 2>&1; done
    for id in $($CTR containers ls -q 2>/dev/null); do $CTR containers rm $id >/dev/null 2>&1; done
  fi
  stop_one containerd
  stop_one kube-controller-manager & stop_one kube-scheduler & wait
  # the apiserver before etcd: stopped together, the apiserver hangs until SIGKILL
  stop_one kube-apiserver
  stop_one etcd
  # 3. unmount everything under $W, deepest first (kubelet root, pod volumes, rootfs, netns, shm)
  local m
  for m in $(awk -v w="$W/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | uniq); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  if [ $host = 1 ]; then
    # 4. the bridge (veths die with their netns)
    ip link show $BR >/dev/null 2>&1 && ip link del $BR
    # 5. the iptables chains the kubelet created, and only those
    local ipt t c rule
    for ipt in iptables ip6tables; do
      command -v $ipt >/dev/null || continue
      for t in filter nat mangle; do
        for c in $KUBELET_CHAINS; do
          $ipt -t $t -S 2>/dev/null | grep -e "-j $c\$" -e "-j $c " | sed 's/^-A/-D/' | while read -r rule; do eval $ipt -t $t $rule; done
          $ipt -t $t -F $c 2>/dev/null && $ipt -t $t -X $c 2>/dev/null
        done
      done
    done
    # 6. the kubelet's cgroups (cgroupfs driver: /kubepods in every hierarchy), deepest first
    local cg
    for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
      [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    # 7. sysctls the kubelet and the bridge plugin changed, directories they created
    if [ -f $W/state/sysctl.orig ]; then
      while IFS= read -r kv; do sysctl -qw "$kv"; done < $W/state/sysctl.orig
    fi
    if [ -f $W/state/created-dirs ]; then
      while IFS= read -r d; do [ -n "$d" ] && rm -rf "$d"; done < <(sort -r $W/state/created-dirs)
    fi
    rm -f $W/state/sysctl.orig $W/state/created-dirs
  fi
  log "down in $((SECONDS - t0)) s"
  set -e -o pipefail
}

case ${1:-} in
  deps) deps ;;
  build) deps; build ;;
  cached) cached ;;
  up) up ;;
  import) [ $# -eq 2 ] || die "usage: cluster.sh import IMAGE.tar"; import_image "$2" ;;
  down | stop) down ;;
  status) status ;;
  proxy-up) proxy_up ;;
  proxy-down) proxy_down ;;
  env) env_ ;;
  paths) paths ;;
  *) echo "usage: $0 build|up|import TAR|down|proxy-up|proxy-down|status|env|paths|cached" >&2; exit 2 ;;
esac
