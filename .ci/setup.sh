#!/usr/bin/env bash
# Installs the Debian 12 packages lb needs to build, test and benchmark.
# Quick when everything is already there: it only calls apt-get for what is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libboost1.81-dev node-llhttp libssl-dev libyaml-cpp-dev prometheus-cpp-dev
  libc-ares-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev
  python3 curl dnsmasq wrk haproxy nginx-light openssl chromium
  apache2-utils strace valgrind linux-perf
  libnghttp2-dev nghttp2-client nghttp2-server python3-h2 python3-grpcio libre2-dev pebble prometheus redis-server libhiredis-dev liburing-dev
  clang libclang-rt-14-dev clang-format
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The daemons come from packages only as test helpers: lb's tests start their own
# instances on loopback ports, so the system services must not hold ports or run.
for svc in dnsmasq haproxy nginx prometheus redis-server; do
  if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  if command -v service >/dev/null 2>&1; then $sudo service "$svc" stop >/dev/null 2>&1 || true; fi
done
