#!/usr/bin/env bash
# Local AWS-compatible servers for shopstream's AWS backends (tests and laptops).
#
#   scripts/local/aws-local.sh install           install the pinned moto[server] with pip and the pinned
#                                          kinesalite with `npm ci` (scripts/local/kinesalite)
#   scripts/local/aws-local.sh start             start moto_server on 127.0.0.1:$PORT (default 5000)
#   scripts/local/aws-local.sh start-kinesalite  start kinesalite on 127.0.0.1:$KINESALITE_PORT (default 4567)
#   scripts/local/aws-local.sh stop              stop every server started by `start` or `start-kinesalite`
#   scripts/local/aws-local.sh stop-kinesalite   stop only the kinesalite started by `start-kinesalite`
#   scripts/local/aws-local.sh env               print the environment the AWS SDK needs to talk to them
#
# The Rust tests start their own servers per test binary on free loopback ports; `start` is for
# running shopstream by hand with config/aws-local.toml:
#   eval "$(scripts/local/aws-local.sh env)"; scripts/local/aws-local.sh start
#   shopstream --config config/aws-local.toml aws init
# moto serves every service; kinesalite serves only Kinesis, and models SplitShard as AWS does
# (moto 5.2.1 moves a split parent's records into its children), so resharding runs against it.
set -euo pipefail

MOTO_VERSION="5.2.1"
PORT="${PORT:-5000}"
STATE_DIR="${STATE_DIR:-${TMPDIR:-/tmp}/shopstream-aws-local}"
PID_FILE="$STATE_DIR/moto.pid"
KINESALITE_PORT="${KINESALITE_PORT:-4567}"
KINESALITE_PID_FILE="$STATE_DIR/kinesalite.pid"
KINESALITE_DIR="$(cd "$(dirname "$0")" && pwd)/kinesalite"

install() {
    python3 -m pip install --quiet "moto[server]==${MOTO_VERSION}"
    # Under pyenv, a new console script is reachable only once its shim exists.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    command -v moto_server >/dev/null || {
        echo "moto_server is not on PATH after installing; add pip's script folder to PATH" >&2
        exit 1
    }
    echo "moto[server] ${MOTO_VERSION} installed: $(command -v moto_server)"
    command -v npm >/dev/null || {
        echo "npm not found: install Node.js 18 or newer (kinesalite runs on it)" >&2
        exit 1
    }
    # The exact versions of scripts/local/kinesalite/package-lock.json.
    npm ci --prefix "$KINESALITE_DIR" --silent --no-audit --no-fund
    echo "kinesalite $(node -p "require('$KINESALITE_DIR/node_modules/kinesalite/package.json').version") installed in $KINESALITE_DIR"
}

start() {
    mkdir -p "$STATE_DIR"
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "moto_server already running (pid $(cat "$PID_FILE")) on 127.0.0.1:${PORT}"
        return
    fi
    command -v moto_server >/dev/null || {
        echo "moto_server not found: run scripts/local/aws-local.sh install" >&2
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

start_kinesalite() {
    mkdir -p "$STATE_DIR"
    if [[ -f "$KINESALITE_PID_FILE" ]] && kill -0 "$(cat "$KINESALITE_PID_FILE")" 2>/dev/null; then
        echo "kinesalite already running (pid $(cat "$KINESALITE_PID_FILE")) on 127.0.0.1:$(cat "$STATE_DIR/kinesalite.port" 2>/dev/null || echo "$KINESALITE_PORT")"
        return
    fi
    [[ -d "$KINESALITE_DIR/node_modules/kinesalite" ]] || {
        echo "kinesalite not installed in $KINESALITE_DIR: run scripts/local/aws-local.sh install" >&2
        exit 1
    }
    local port_file="$STATE_DIR/kinesalite.port"
    rm -f "$port_file"
    # server.js binds 127.0.0.1 only (kinesalite's own CLI binds every interface).
    nohup node "$KINESALITE_DIR/server.js" "$KINESALITE_PORT" --port-file "$port_file" \
        >"$STATE_DIR/kinesalite.log" 2>&1 &
    echo $! >"$KINESALITE_PID_FILE"
    for _ in $(seq 1 100); do
        if [[ -s "$port_file" ]]; then
            echo "kinesalite running on http://127.0.0.1:$(cat "$port_file") (pid $(cat "$KINESALITE_PID_FILE"), log $STATE_DIR/kinesalite.log)"
            return
        fi
        kill -0 "$(cat "$KINESALITE_PID_FILE")" 2>/dev/null || break
        sleep 0.1
    done
    echo "kinesalite did not start on 127.0.0.1:${KINESALITE_PORT}; see $STATE_DIR/kinesalite.log" >&2
    exit 1
}

# stop_one NAME PID_FILE
stop_one() {
    if [[ -f "$2" ]]; then
        kill "$(cat "$2")" 2>/dev/null || true
        rm -f "$2"
        echo "$1 stopped"
    else
        echo "no $1 started by this script"
    fi
}

stop() {
    stop_one moto_server "$PID_FILE"
    if [[ -f "$KINESALITE_PID_FILE" ]]; then stop_one kinesalite "$KINESALITE_PID_FILE"; fi
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
    start-kinesalite) start_kinesalite ;;
    stop) stop ;;
    stop-kinesalite) stop_one kinesalite "$KINESALITE_PID_FILE" ;;
    env) env_vars ;;
    *)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
