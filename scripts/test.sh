#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test (unit, property,
# black-box tests of the real binary over HTTP, tests against local AWS-compatible servers).
# Usage: bash scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-deps.sh
echo "==> cargo test"
cargo test --locked "$@"
echo "==> self-tests of the Python test tools (fault proxy, boto3 read-back)"
python3 scripts/test_fault_proxy.py
python3 scripts/test_readback.py
