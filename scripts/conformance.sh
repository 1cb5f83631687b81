#!/usr/bin/env bash
# Builds the Gateway API conformance suite (a Go test binary) and its echo
# backend at the Gateway API version the test bed carries, idempotently,
# and prints where they are.
#
#   scripts/conformance.sh         build or reuse both, then print KEY=VALUE lines
#   scripts/conformance.sh mesh    the same, plus Istio's echo app for MESH-HTTP
#
# The suite is `go test -c sigs.k8s.io/gateway-api/conformance`; the backend
# is `sigs.k8s.io/gateway-api/conformance/echo-basic`, static. Both come from
# the module proxy through a small module of our own under
# ${SLUICE_CACHE:-~/.cache/sluice}/conformance/<version>, keyed by version.
# ECHO_IMAGE is the image name the suite's manifests run the backend under;
# COREDNS (its UDP backend, run as COREDNS_IMAGE) is built the same way.
# With `mesh`, the MESH-HTTP profile's echo app (the image its manifests name
# is Istio's test app: `server`, `client` and a TLS pair) is built from the
# Istio module at ISTIO_ECHO_VERSION and printed as ISTIO_ECHO_* lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

say() { printf '[conformance] %s\n' "$*" >&2; }
die() { printf '[conformance] error: %s\n' "$*" >&2; exit 1; }

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
dir="$cache/conformance/$GATEWAY_API_VERSION"
suite="$dir/bin/conformance.test"
echo_bin="$dir/bin/echo-basic"

command -v go >/dev/null || die "Go is required to build the conformance suite (see scripts/test-bed.sh)"

if [ ! -x "$suite" ] || [ ! -x "$echo_bin" ]; then
  mkdir -p "$dir/src" "$dir/bin"
  cd "$dir/src"
  cat >go.mod <<EOF
module sluice.test/conformance

go 1.25

require (
	sigs.k8s.io/gateway-api $GATEWAY_API_VERSION
	sigs.k8s.io/gateway-api/conformance $GATEWAY_API_VERSION
)
EOF
  cat >tools.go <<'EOF'
//go:build tools

// Package tools pins what scripts/conformance.sh builds.
package tools

import (
	_ "sigs.k8s.io/gateway-api/conformance"
	_ "sigs.k8s.io/gateway-api/conformance/echo-basic"
)
EOF
  say "resolving sigs.k8s.io/gateway-api/conformance@$GATEWAY_API_VERSION"
  go mod tidy >&2
  say "building the suite (go test -c) and echo-basic"
  go test -c -o "$suite.tmp" sigs.k8s.io/gateway-api/conformance >&2
  CGO_ENABLED=0 go build -trimpath -o "$echo_bin.tmp" sigs.k8s.io/gateway-api/conformance/echo-basic >&2
  mv "$suite.tmp" "$suite"
  mv "$echo_bin.tmp" "$echo_bin"
fi

module="$(cd "$dir/src" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)"
image="$(sed -n 's/^ *image: *\(.*echo-basic:.*\)$/\1/p' "$module/base/manifests.yaml" | head -n 1)"
[ -n "$image" ] || die "no echo-basic image in $module/base/manifests.yaml"
coredns_image="$(sed -n 's/^ *image: *\(.*coredns:.*\)$/\1/p' "$module/base/manifests.yaml" | head -n 1)"
[ -n "$coredns_image" ] || die "no coredns image in $module/base/manifests.yaml"

# The suite's UDP backend is CoreDNS at the version its manifest names,
# with the plugins its Corefile uses (the test bed's cluster DNS has fewer).
coredns_version="${coredns_image##*:}"
coredns_bin="$dir/bin/coredns-$coredns_version"
if [ ! -x "$coredns_bin" ]; then
  mkdir -p "$dir/coredns"
  cd "$dir/coredns"
  cat >main.go <<'GO'
// Command coredns is CoreDNS with the plugins of the conformance suite's
// Corefile.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// The order in which a query passes the plugins, as CoreDNS's plugin.cfg
// has it.
var directives = []string{"errors", "log", "whoami", "forward"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
GO
  [ -f go.mod ] || go mod init sluice.test/conformance-coredns >/dev/null 2>&1
  say "building CoreDNS $coredns_version for the suite's UDP backend"
  go get "github.com/coredns/coredns@$coredns_version" >&2
  go mod tidy >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$coredns_bin.tmp" . >&2
  mv "$coredns_bin.tmp" "$coredns_bin"
fi

if [ "${1:-}" = mesh ]; then
  istio_dir="$cache/conformance/istio-echo/$ISTIO_ECHO_VERSION"
  if [ ! -x "$istio_dir/bin/server" ] || [ ! -x "$istio_dir/bin/client" ]; then
    mkdir -p "$istio_dir/bin"
    say "building Istio's echo server and client ($ISTIO_ECHO_VERSION; large, once)"
    GOBIN="$istio_dir/bin.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
      "istio.io/istio/pkg/test/echo/cmd/server@$ISTIO_ECHO_VERSION" \
      "istio.io/istio/pkg/test/echo/cmd/client@$ISTIO_ECHO_VERSION" >&2
    mv "$istio_dir/bin.tmp/server" "$istio_dir/bin.tmp/client" "$istio_dir/bin/"
    rmdir "$istio_dir/bin.tmp"
  fi
  istio_module="$(go env GOMODCACHE)/istio.io/istio@$ISTIO_ECHO_VERSION"
  [ -f "$istio_module/tests/testdata/certs/cert.crt" ] ||
    die "no test certificate in $istio_module/tests/testdata/certs"
  advanced_image="$(sed -n 's/^ *image: *\(.*echo-advanced:.*\)$/\1/p' "$module/mesh/manifests.yaml" | head -n 1)"
  [ -n "$advanced_image" ] || die "no echo-advanced image in $module/mesh/manifests.yaml"
  echo "ISTIO_ECHO_SERVER=$istio_dir/bin/server"
  echo "ISTIO_ECHO_CLIENT=$istio_dir/bin/client"
  echo "ISTIO_ECHO_CERT=$istio_module/tests/testdata/certs/cert.crt"
  echo "ISTIO_ECHO_KEY=$istio_module/tests/testdata/certs/cert.key"
  echo "ECHO_ADVANCED_IMAGE=$advanced_image"
fi

echo "SUITE=$suite"
echo "ECHO_BASIC=$echo_bin"
echo "ECHO_IMAGE=$image"
echo "COREDNS_IMAGE=$coredns_image"
echo "COREDNS=$coredns_bin"
echo "GATEWAY_API_VERSION=$GATEWAY_API_VERSION"
