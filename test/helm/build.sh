#!/bin/bash
# build.sh - helm, built from the Go module proxy (./hbuild pins helm.sh/helm/v3), for the chart's tests
# (e2e/helm_test.go) and for `helm lint`/`helm template` of deploy/helm/devgpu. Offline once built.
#
# Usage:  build.sh          # build helm into the cache if missing (1-3 min cold on 2 cores); prints its path
#         build.sh path     # print where helm is (or would be) cached, build nothing
#         build.sh cached   # exit 0 when helm is cached
# Env:    DEVGPU_HELM_CACHE (default /var/cache/devgpu/helm): helm in <version>-<hash of ./hbuild>/bin/helm
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELM_VERSION=v3.22.0
# the Kubernetes version helm's client modules are (hbuild/go.mod): `helm template` and `helm lint` assume
# it, as a release's helm does, rather than 1.20
K8S_MINOR=37
# as helm's Makefile sets them; CGO off: a static binary like the release's
LDF="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
CACHE=${DEVGPU_HELM_CACHE:-/var/cache/devgpu/helm}
# the cache key: a change to the tools module or to the flags builds afresh
KEY=$( (cat "$HERE/hbuild/go.mod" "$HERE/hbuild/go.sum"; echo "$LDF") | sha256sum | cut -c1-12)
BIN=$CACHE/$HELM_VERSION-$KEY/bin

log() { echo "[$(date +%T)] $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

case ${1:-build} in
  path) echo "$BIN/helm"; exit 0 ;;
  cached) [ -x "$BIN/helm" ]; exit ;;
  build) ;;
  *) echo "usage: $0 [build|path|cached]" >&2; exit 2 ;;
esac

if [ -x "$BIN/helm" ]; then
  log "helm cached in $BIN"
  echo "$BIN/helm"
  exit 0
fi
command -v go >/dev/null || die "building helm needs Go >= 1.26 on PATH."
mkdir -p "$CACHE"
# build into a temporary directory and rename, so a cache dir is complete or absent
tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS
(cd "$HERE/hbuild" && GOWORK=off GOFLAGS=-buildvcs=false CGO_ENABLED=0 go build -trimpath \
  -ldflags="$(echo $LDF)" -o "$tmp/bin/helm" helm.sh/helm/v3/cmd/helm)
mkdir -p "$(dirname "$BIN")"
mv -T "$tmp/bin" "$BIN" 2>/dev/null || [ -x "$BIN/helm" ] || die "could not move helm into $BIN."
rm -rf "$tmp"; trap - EXIT
log "built helm $HELM_VERSION into $BIN in $((SECONDS - t0)) s"
echo "$BIN/helm"
