#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, on a bare Debian machine of this project's kind.
# Idempotent: what is already there is left alone. Needs root (or sudo) for apt-get.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # promtool: /metrics, deploy/prometheus
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

# cfn-lint checks deploy/cloudformation.json (a phase of scripts/test.sh); pinned like moto.
CFN_LINT_VERSION="1.51.0"
if [ "$(cfn-lint --version 2>/dev/null)" != "cfn-lint ${CFN_LINT_VERSION}" ]; then
  echo "==> pip install cfn-lint==${CFN_LINT_VERSION}"
  python3 -m pip install --quiet "cfn-lint==${CFN_LINT_VERSION}"
  # Under pyenv, a new console script is reachable only once its shim exists.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  command -v cfn-lint >/dev/null || {
    echo "cfn-lint is not on PATH after installing; add pip's script folder to PATH" >&2
    exit 1
  }
fi

# schemathesis fuzzes the HTTP API against src/web/openapi.json (scripts/testing/schemathesis.sh,
# a phase of scripts/test.sh); pinned like cfn-lint, as its checks and flags change between versions.
SCHEMATHESIS_VERSION="4.32.5"
if [ "$(schemathesis --version 2>/dev/null)" != "schemathesis, version ${SCHEMATHESIS_VERSION}" ]; then
  echo "==> pip install schemathesis==${SCHEMATHESIS_VERSION}"
  python3 -m pip install --quiet "schemathesis==${SCHEMATHESIS_VERSION}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  command -v schemathesis >/dev/null || {
    echo "schemathesis is not on PATH after installing; add pip's script folder to PATH" >&2
    exit 1
  }
fi

if [ -f scripts/local/aws-local.sh ]; then
  bash scripts/local/aws-local.sh install
fi
echo "==> test dependencies ready"
