#!/usr/bin/env bash
# Installs the benchmark's comparison points and load generator from Debian:
# nginx, HAProxy and wrk, and valgrind (callgrind counts instructions). Idempotent; prints nothing when all are present.
set -euo pipefail
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v valgrind >/dev/null || need+=(valgrind)
command -v taskset >/dev/null || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "bench-tools: install as root: apt-get install ${need[*]}" >&2; exit 1; }
  echo "[bench-tools] installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged services; the benchmark runs its own instances.
  systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
  pkill -x nginx >/dev/null 2>&1 || true
  pkill -x haproxy >/dev/null 2>&1 || true
fi
