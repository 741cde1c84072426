#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test (unit, property,
# black-box tests of the real binary over HTTP, tests against local AWS-compatible servers).
# Every test binary runs even when one fails (--no-fail-fast), and the end names every phase that
# failed, with the time each phase took.
# Usage: bash scripts/test.sh [extra cargo test args, e.g. --test aws_fleet]
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()
log=$(mktemp -t shopstream-tests.XXXXXX)
trap 'rm -f "$log"' EXIT

# phase NAME COMMAND...: runs COMMAND, records its time, and remembers NAME when it fails.
phase() {
  local name=$1 started=$SECONDS
  shift
  echo "==> $name"
  if "$@"; then
    echo "==> $name: ok in $((SECONDS - started)) s"
  else
    echo "==> $name: FAILED after $((SECONDS - started)) s"
    failed+=("$name")
  fi
}

phase "test dependencies" bash scripts/testing/setup-test-deps.sh
phase "build (cargo test --no-run)" cargo test --locked --no-run "$@"
echo "==> build output: $(du -sh target 2>/dev/null | cut -f1); disk free: $(df -h --output=avail . | tail -1 | tr -d ' ')"
# The heavy tests (emulators plus several shopstream processes) take a lock of their own and run
# one at a time (tests/common: heavy_test); the rest run in parallel.
phase "cargo test" bash -c 'set -o pipefail; cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$0"' "$log" "$@"
# The binary the build phase made, fuzzed against its OpenAPI document on a port of its own.
phase "API against its OpenAPI document (schemathesis)" bash scripts/testing/schemathesis.sh
phase "alert rules (promtool check rules)" promtool check rules deploy/prometheus/alerts.yml
phase "alert rule tests (promtool test rules)" promtool test rules deploy/prometheus/alerts_test.yml
phase "CloudFormation template (cfn-lint)" cfn-lint deploy/cloudformation.json
phase "self-test of the fault proxy" python3 scripts/testing/test_fault_proxy.py
phase "self-test of the boto3 read-back" python3 scripts/testing/test_readback.py

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED phases: %s\n' "$(IFS=,; echo "${failed[*]}")"
  grep -E '^test .* FAILED$' "$log" | sort -u | sed 's/^/  /' || true
else
  echo "all test phases passed in ${SECONDS} s"
fi
# The closing line: every cargo test binary's results added up.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
[ ${#failed[@]} -eq 0 ]
