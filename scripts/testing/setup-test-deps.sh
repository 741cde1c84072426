#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, on a bare Debian machine of this project's kind.
# Idempotent: what is already there is left alone. Needs root (or sudo) for apt-get.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # promtool checks /metrics
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)       # handy for people reading the stores
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-liberation)  # the dashboard's real-browser test
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # --no-install-recommends keeps it to the binaries; the prometheus package's service is not started
  # in a container without an init system, and is not needed: only promtool is used.
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The prometheus package may start its server where an init system exists; the tests need only promtool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

if [ -f scripts/local/aws-local.sh ]; then
  bash scripts/local/aws-local.sh install
fi
echo "==> test dependencies ready"
