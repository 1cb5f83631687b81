#!/usr/bin/env bash
# Installs what the local test bed needs, idempotently, and prints where it is.
#
#   scripts/test-bed.sh          build or reuse every binary, then print KEY=PATH lines
#   scripts/test-bed.sh --quiet  the same without progress on stderr
#
# Debian packages come from apt (runc and the CNI plugins among them); etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet,
# kube-proxy, containerd (with ctr and its runc shim), CoreDNS and helm are built
# from their Go modules at the versions pinned in scripts/versions.env, and the
# Gateway API CRDs are taken from the sigs.k8s.io/gateway-api module. Everything is cached under
# ${SLUICE_CACHE:-~/.cache/sluice}, keyed by version, so a warm call returns in
# well under a second. Progress goes to stderr; stdout carries only KEY=PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
say() { [ "$quiet" = 1 ] || printf '[test-bed] %s\n' "$*" >&2; }
die() { printf '[test-bed] error: %s\n' "$*" >&2; exit 1; }

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
mkdir -p "$cache"

k8s_bin="$cache/k8s/$K8S_VERSION/bin"
etcd_bin="$cache/etcd/$ETCD_VERSION/bin"
helm_bin="$cache/helm/$HELM_VERSION/bin"
containerd_bin="$cache/containerd/$CONTAINERD_VERSION/bin"
coredns_bin="$cache/coredns/$COREDNS_VERSION/bin"
metrics_bin="$cache/metrics-server/$METRICS_SERVER_VERSION/bin"
prometheus_dir="$cache/prometheus/debian"
gw_dir="$cache/gateway-api/$GATEWAY_API_VERSION"

print_paths() {
  echo "ETCD=$etcd_bin/etcd"
  echo "KUBE_APISERVER=$k8s_bin/kube-apiserver"
  echo "KUBE_CONTROLLER_MANAGER=$k8s_bin/kube-controller-manager"
  echo "KUBE_SCHEDULER=$k8s_bin/kube-scheduler"
  echo "KUBECTL=$k8s_bin/kubectl"
  echo "HELM=$helm_bin/helm"
  echo "KUBELET=$k8s_bin/kubelet"
  echo "KUBE_PROXY=$k8s_bin/kube-proxy"
  echo "CONTAINERD=$containerd_bin/containerd"
  echo "CTR=$containerd_bin/ctr"
  echo "CONTAINERD_SHIM=$containerd_bin/containerd-shim-runc-v2"
  echo "COREDNS=$coredns_bin/coredns"
  echo "COREDNS_VERSION=$COREDNS_VERSION"
  echo "METRICS_SERVER=$metrics_bin/metrics-server"
  echo "METRICS_SERVER_VERSION=$METRICS_SERVER_VERSION"
  echo "PROMETHEUS=$prometheus_dir/usr/bin/prometheus"
  echo "RUNC=$(command -v runc || echo /usr/sbin/runc)"
  echo "CNI_BIN_DIR=/usr/lib/cni"
  echo "GATEWAY_API_CRDS=$gw_dir/standard-install.yaml"
  echo "K8S_VERSION=$K8S_VERSION"
}

all_present() {
  [ -x "$etcd_bin/etcd" ] && [ -x "$k8s_bin/kube-apiserver" ] &&
    [ -x "$k8s_bin/kube-controller-manager" ] && [ -x "$k8s_bin/kube-scheduler" ] &&
    [ -x "$k8s_bin/kubectl" ] && [ -x "$k8s_bin/kubelet" ] && [ -x "$k8s_bin/kube-proxy" ] &&
    [ -x "$helm_bin/helm" ] && [ -x "$containerd_bin/containerd" ] && [ -x "$containerd_bin/ctr" ] &&
    [ -x "$containerd_bin/containerd-shim-runc-v2" ] && [ -x "$coredns_bin/coredns" ] &&
    [ -x "$metrics_bin/metrics-server" ] && [ -x "$prometheus_dir/usr/bin/prometheus" ] &&
    [ -s "$gw_dir/standard-install.yaml" ] && [ -f "$cache/.debian-packages-v3-ok" ]
}

# Fast path: nothing to do, no lock needed.
if all_present; then
  print_paths
  exit 0
fi

# One builder at a time: tests running in parallel wait here for the first one.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  say "another build holds $cache/.lock; waiting for it"
  flock 9
fi

debian_packages() {
  [ -f "$cache/.debian-packages-v3-ok" ] && return 0
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v iptables >/dev/null || need+=(iptables)
  command -v curl >/dev/null || need+=(curl)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v flock >/dev/null || need+=(util-linux)
  command -v openssl >/dev/null || need+=(openssl)
  # The dashboard's browser tests drive headless Chromium.
  command -v chromium >/dev/null || need+=(chromium)
  # The node: the OCI runtime, the CNI plugins (bridge, host-local, loopback,
  # portmap in /usr/lib/cni), conntrack for kube-proxy, and what the curl
  # client image is made of (curl with its libraries, busybox for a shell).
  [ -x /usr/sbin/runc ] || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v conntrack >/dev/null || need+=(conntrack)
  [ -x /bin/busybox ] || need+=(busybox-static)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
  if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${need[*]} (run as root or apt-get install them)"
    say "installing Debian packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  touch "$cache/.debian-packages-v3-ok"
}

need_go() {
  command -v go >/dev/null || die "Go is required to build the Kubernetes binaries.
Install Go 1.26 or newer (Debian: 'apt-get install golang-1.26' or the official tarball),
put 'go' on PATH, and run this script again."
  local v
  v="$(go env GOVERSION | sed 's/^go//')"
  case "$v" in
    1.2[6-9]* | 1.[3-9]* | [2-9].*) ;;
    *) die "Go $v is too old: Kubernetes $K8S_VERSION needs Go 1.26 or newer." ;;
  esac
}

# Prints a line every 30 s while a long step runs, so CI logs show life.
with_progress() {
  local what="$1"
  shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -0 "$pid" 2>/dev/null && say "$what: still building ($((SECONDS - start)) s)"
  done
  wait "$pid" || die "$what failed"
  say "$what: done in $((SECONDS - start)) s"
}

build_k8s() {
  [ -x "$k8s_bin/kube-apiserver" ] && [ -x "$k8s_bin/kube-controller-manager" ] &&
    [ -x "$k8s_bin/kube-scheduler" ] && [ -x "$k8s_bin/kubectl" ] &&
    [ -x "$k8s_bin/kubelet" ] && [ -x "$k8s_bin/kube-proxy" ] && return 0
  need_go
  local rest="${K8S_VERSION#v1.}" # e.g. 36.3
  local minor="${rest%%.*}"       # e.g. 36
  local staging_version="v0.$rest"
  local mod="$cache/build/k8s-$K8S_VERSION"
  say "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy); once per version, ~15-25 min on 2 cores"
  rm -rf "$mod" && mkdir -p "$mod"
  (
    cd "$mod"
    go mod init sluice.local/k8s-bins >/dev/null 2>&1
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    # The kubernetes module requires its staging modules at v0.0.0 with local
    # replaces that do not apply to us; point each at its published version.
    local m
    for m in $(grep -oE 'k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}' | sort -u); do
      go mod edit -replace "$m=$m@$staging_version"
    done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
      go mod edit -tool "k8s.io/kubernetes/cmd/$t"
    done
    go mod tidy >&2
  )
  local date
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldf="" pkg
  # Without these, /version says v0.0.0-master and kubectl warns of skew.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$k8s_bin.tmp"
  with_progress "kubernetes $K8S_VERSION" \
    env -C "$mod" CGO_ENABLED=0 GOBIN="$k8s_bin.tmp" go install -trimpath -ldflags "-s -w $ldf" tool
  rm -rf "$k8s_bin" && mv "$k8s_bin.tmp" "$k8s_bin"
}

# Builds the `main` package read from stdin, in a wrapper module of its own
# named NAME that requires REQUIREMENT (module@version), into OUT: for
# servers whose module cannot be installed as it is (etcd) or that are built
# with a selection of plugins (CoreDNS).
build_main() {
  local name="$1" requirement="$2" out="$3" ldflags="$4"
  local mod="$cache/build/$name"
  rm -rf "$mod" && mkdir -p "$mod"
  cat >"$mod/main.go"
  (
    cd "$mod"
    go mod init "sluice.local/$name" >/dev/null 2>&1
    go get "$requirement" >&2
    go mod tidy >&2
  )
  mkdir -p "$(dirname "$out")"
  with_progress "$name" \
    env -C "$mod" CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" .
  mv "$out.tmp" "$out"
}

build_etcd() {
  [ -x "$etcd_bin/etcd" ] && return 0
  need_go
  say "building etcd $ETCD_VERSION; once per version, a few minutes"
  build_main "etcd-$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
    "$etcd_bin/etcd" "-s -w" <<'GO'
// Command etcd runs the etcd server for the Sluice test bed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
}

# Installs the commands PKG@VERSION... (of a module whose go.mod has no
# replace directives, so that a plain install works) into BIN, through a
# temporary directory so that an interrupted build leaves nothing half done.
# GO_TAGS, when set, are the build tags.
go_install() {
  local what="$1" bin="$2" ldflags="$3"
  shift 3
  mkdir -p "$bin.tmp"
  with_progress "$what" \
    env -C "$cache" CGO_ENABLED=0 GOBIN="$bin.tmp" go install -trimpath \
    -tags "${GO_TAGS:-}" -ldflags "$ldflags" "$@"
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
}

build_helm() {
  [ -x "$helm_bin/helm" ] && return 0
  need_go
  say "building helm $HELM_VERSION; once per version, a few minutes"
  go_install "helm $HELM_VERSION" "$helm_bin" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_containerd() {
  [ -x "$containerd_bin/containerd" ] && [ -x "$containerd_bin/ctr" ] &&
    [ -x "$containerd_bin/containerd-shim-runc-v2" ] && return 0
  need_go
  say "building containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2); once per version, a few minutes"
  local m=github.com/containerd/containerd/v2
  # The snapshotters that need cgo or host tools are left out; overlayfs is used.
  GO_TAGS="no_btrfs no_devmapper no_zfs" go_install "containerd $CONTAINERD_VERSION" "$containerd_bin" \
    "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m" \
    "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION" \
    "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
}

build_coredns() {
  [ -x "$coredns_bin/coredns" ] && return 0
  need_go
  say "building CoreDNS $COREDNS_VERSION with the plugins cluster DNS needs; once per version, a few minutes"
  # CoreDNS's compile-time plugin selection: only what kube-dns needs, so
  # the cloud providers' SDKs are not built.
  build_main "coredns-$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION" \
    "$coredns_bin/coredns" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" <<'GO'
// Command coredns is CoreDNS with the plugins that cluster DNS needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order in which a query passes the plugins, as CoreDNS's plugin.cfg
// has it. No `forward`: names outside the cluster are not looked up.
var directives = []string{
	"reload", "health", "ready", "errors", "log", "loadbalance", "cache", "kubernetes",
}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
GO
}

build_metrics_server() {
  [ -x "$metrics_bin/metrics-server" ] && return 0
  need_go
  say "building metrics-server $METRICS_SERVER_VERSION; once per version, a few minutes"
  go_install "metrics-server $METRICS_SERVER_VERSION" "$metrics_bin" "-s -w" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}

# Prometheus from Debian's package, unpacked into the cache rather than
# installed: installing it would start a system service on :9090. The
# analysis tests start it themselves, on loopback.
fetch_prometheus() {
  [ -x "$prometheus_dir/usr/bin/prometheus" ] && return 0
  say "fetching Debian's prometheus package"
  local tmp
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download -qq prometheus >&2 2>/dev/null); then
    [ "$(id -u)" = 0 ] || die "apt-get download prometheus failed (run as root once so that apt-get update can run)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    (cd "$tmp" && apt-get download -qq prometheus >&2) || die "apt-get download prometheus failed"
  fi
  rm -rf "$prometheus_dir.tmp"
  mkdir -p "$prometheus_dir.tmp"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$prometheus_dir.tmp"
  rm -rf "$tmp" "$prometheus_dir"
  mv "$prometheus_dir.tmp" "$prometheus_dir"
  [ -x "$prometheus_dir/usr/bin/prometheus" ] || die "the prometheus package has no usr/bin/prometheus"
}

fetch_gateway_api() {
  [ -s "$gw_dir/standard-install.yaml" ] && return 0
  need_go
  say "fetching Gateway API $GATEWAY_API_VERSION CRDs (standard channel)"
  local dir
  dir="$(cd "$cache" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  [ -d "$dir/config/crd/standard" ] || die "no config/crd/standard in sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
  mkdir -p "$gw_dir"
  local f out="$gw_dir/standard-install.yaml.tmp"
  : >"$out"
  for f in "$dir"/config/crd/standard/*.yaml; do
    case "$(basename "$f")" in kustomization.yaml) continue ;; esac
    printf -- '---\n' >>"$out"
    cat "$f" >>"$out"
  done
  mv "$out" "$gw_dir/standard-install.yaml"
}

debian_packages
build_etcd
build_helm
fetch_gateway_api
build_containerd
build_coredns
build_metrics_server
fetch_prometheus
build_k8s
all_present || die "build finished but some binaries are missing under $cache"
say "test bed ready under $cache"
print_paths
