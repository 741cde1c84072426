#!/usr/bin/env bash
# Batch import throughput and peak memory on the embedded warehouse.
#
#   scripts/bench/bench_import.sh [--10x]
#
# Builds the release binary, generates the full-size export (541,909 lines, Latin-1, as the Kaggle
# copy) and, with --10x, a ten times larger one; then for each file measures:
#   - parse only (`import --dry-run`): the ceiling the parser sets,
#   - import into a fresh warehouse: rows/s and peak RSS (VmHWM via /usr/bin/time -v),
#   - re-import of the same file: the cost of the ledger check (hash + skip).
# Prints the figures; nothing is asserted (speed is measured, not tested).
set -euo pipefail

cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/shopstream"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sizes=(541909)
if [[ "${1:-}" == "--10x" ]]; then
    sizes+=(5419090)
fi

# Runs "$@", prints its stdout's last line, wall seconds and peak RSS in MiB.
measure() {
    local label="$1"
    shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err" || {
        cat "$work/err" >&2
        return 1
    }
    read -r seconds kib <"$work/time"
    printf '%-28s %8.2f s  %7.1f MiB peak RSS  | %s\n' "$label" "$seconds" "$(echo "$kib / 1024" | bc -l)" \
        "$(tail -n 1 "$work/out")"
}

echo "machine: $(nproc) cores, $(uname -sr); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for lines in "${sizes[@]}"; do
    file="$work/export-$lines.csv"
    "$bin" generate --lines "$lines" --encoding latin1 --output "$file" 2>/dev/null
    echo "== $lines lines, $(du -m "$file" | cut -f1) MiB, Latin-1 CSV"
    measure "parse only (--dry-run)" "$bin" import --dry-run --data-dir "$work/dry-$lines" "$file"
    measure "import (embedded)" "$bin" import --data-dir "$work/data-$lines" "$file"
    measure "re-import (ledger skip)" "$bin" import --data-dir "$work/data-$lines" "$file"
done
