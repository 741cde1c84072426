#!/usr/bin/env bash
# Local AWS-compatible servers for shopstream's AWS backends (tests and laptops).
#
#   scripts/aws-local.sh install   install the pinned moto[server] with pip
#   scripts/aws-local.sh start     start moto_server on 127.0.0.1:$PORT (default 5000) in the background
#   scripts/aws-local.sh stop      stop the server started by `start`
#   scripts/aws-local.sh env       print the environment the AWS SDK needs to talk to it
#
# The Rust tests start their own moto_server per test binary on a free loopback port; `start` is
# for running shopstream by hand with config/aws-local.toml:
#   eval "$(scripts/aws-local.sh env)"; scripts/aws-local.sh start
#   shopstream --config config/aws-local.toml aws init
set -euo pipefail

MOTO_VERSION="5.2.1"
PORT="${PORT:-5000}"
STATE_DIR="${STATE_DIR:-${TMPDIR:-/tmp}/shopstream-aws-local}"
PID_FILE="$STATE_DIR/moto.pid"

install() {
    python3 -m pip install --quiet "moto[server]==${MOTO_VERSION}"
    # Under pyenv, a new console script is reachable only once its shim exists.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    command -v moto_server >/dev/null || {
        echo "moto_server is not on PATH after installing; add pip's script folder to PATH" >&2
        exit 1
    }
    echo "moto[server] ${MOTO_VERSION} installed: $(command -v moto_server)"
}

start() {
    mkdir -p "$STATE_DIR"
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "moto_server already running (pid $(cat "$PID_FILE")) on 127.0.0.1:${PORT}"
        return
    fi
    command -v moto_server >/dev/null || {
        echo "moto_server not found: run scripts/aws-local.sh install" >&2
        exit 1
    }
    # Loopback only: the local servers accept any credentials.
    nohup moto_server -H 127.0.0.1 -p "$PORT" >"$STATE_DIR/moto.log" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:${PORT}/moto-api/" >/dev/null 2>&1; then
            echo "moto_server running on http://127.0.0.1:${PORT} (pid $(cat "$PID_FILE"), log $STATE_DIR/moto.log)"
            return
        fi
        sleep 0.1
    done
    echo "moto_server did not answer on 127.0.0.1:${PORT}; see $STATE_DIR/moto.log" >&2
    exit 1
}

stop() {
    if [[ -f "$PID_FILE" ]]; then
        kill "$(cat "$PID_FILE")" 2>/dev/null || true
        rm -f "$PID_FILE"
        echo "moto_server stopped"
    else
        echo "no moto_server started by this script"
    fi
}

env_vars() {
    cat <<EOV
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
EOV
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) env_vars ;;
    *)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
