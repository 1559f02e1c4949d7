#!/usr/bin/env bash
# Runs one fuzz target for a bounded time: fuzz/run.sh TARGET SECONDS
# Targets: framer syslog_header cef json parse_message
set -euo pipefail
target="${1:?usage: fuzz/run.sh TARGET SECONDS}"
seconds="${2:?usage: fuzz/run.sh TARGET SECONDS}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi

# Seeds from the repo's test vectors (idempotent: files are named by content hash).
python3 seed.py
mkdir -p "corpus/$target" "artifacts/$target"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# -print_final_stats gives the execution count; libFuzzer writes its report to stderr.
# --sanitizer none: the targets are safe Rust (no `unsafe` on these paths beyond the SIMD
# crates), so ASan adds little; without it the dependency build is several times faster and
# each run executes far more inputs. Panics, arithmetic overflows and OOM
# (-rss_limit_mb) are still caught; --debug-assertions turns on overflow checks.
cargo +nightly fuzz run --sanitizer none --debug-assertions "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
    2>&1 | tee "$log" || status=$?
execs="$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -n1)"
echo "fuzz target=$target seconds=$seconds executions=${execs:-unknown} status=$status"
if [ "$status" -ne 0 ]; then
    echo "crash reproducers: $(ls -1 "artifacts/$target" 2>/dev/null | tr '\n' ' ')"
fi
exit "$status"
