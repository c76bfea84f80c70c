#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time each and
# fails if any finds a crash, a hang or a broken property.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20 s, all targets)
#
# Needs a nightly toolchain (cargo-fuzz builds with -Zsanitizer=address), or
# falls back to stable with RUSTC_BOOTSTRAP=1; installs cargo-fuzz if missing.
# No clang needed: libfuzzer-sys builds libFuzzer itself with the C++
# compiler the cc crate finds (g++ on Debian).
# Each target starts from the committed seeds (fuzz/seeds/TARGET, read only)
# plus whatever earlier runs left in fuzz/corpus/TARGET (not committed), so
# repeated runs keep their progress. Crashes land in fuzz/artifacts/TARGET/.
# Environment: FUZZ_RSS_MB (default 2048), FUZZ_JOBS (parallel processes per
# target, default 1), FUZZ_TOOLCHAIN (default nightly), FUZZ_LOG_DIR (keep
# each target's libFuzzer log there).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-20}
shift || true
toolchain=${FUZZ_TOOLCHAIN:-nightly}
rss=${FUZZ_RSS_MB:-2048}
jobs=${FUZZ_JOBS:-1}

if [ -z "${FUZZ_TOOLCHAIN:-}" ] && ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    toolchain=stable
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the $toolchain toolchain is missing: rustup toolchain install $toolchain" >&2
    exit 2
fi
# cargo-fuzz passes -Z flags (the sanitizer); a stable compiler accepts them
# only with RUSTC_BOOTSTRAP=1 (tested with 1.95: ASan and libFuzzer work).
case "$toolchain" in
    nightly*) ;;
    *) export RUSTC_BOOTSTRAP=1 ;;
esac
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
    echo "fuzz.sh: libfuzzer-sys compiles libFuzzer with a C++ compiler: apt-get install g++" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=($(cargo fuzz list))
fi

# The session and spool targets write spools under TMPDIR: keep them on
# tmpfs when there is one (fsync is then free), and remove them afterwards.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/smarthost-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work

cargo +"$toolchain" fuzz build

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$work/$t.log"
    echo "== $t: ${seconds}s"
    status=0
    # -timeout: one input taking 30 s is a hang (the session target runs on
    # paused time, so nothing legitimate takes that long). -len_control: let
    # inputs grow sooner than libFuzzer's default (long lines matter here).
    extra=()
    [ "$jobs" -gt 1 ] && extra+=(-jobs="$jobs" -workers="$jobs")
    [ -f "dicts/$t.dict" ] && extra+=(-dict="dicts/$t.dict")
    cargo +"$toolchain" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -timeout=30 \
        -max_len=16384 -len_control=20 -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1 || status=$?
    # With -jobs, libFuzzer writes each job's output to fuzz-N.log.
    cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log
    [ -n "${FUZZ_LOG_DIR:-}" ] && cp "$log" "$FUZZ_LOG_DIR/"
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}')
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{s+=$2} END {print s+0}')
    summary+=("$(printf '%-16s %10s execs %7s exec/s  %s' "$t" "$execs" "$rate" "${done_line#*DONE}")")
    if [ "$status" -ne 0 ] || grep -qE 'panicked at|==ERROR|SUMMARY: libFuzzer' "$log"; then
        echo "!! $t failed (exit $status):"
        grep -E -A8 'panicked at|==ERROR|SUMMARY: libFuzzer' "$log" | head -40
        grep -E 'Test unit written to' "$log" || true
        failed+=("$t")
    fi
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/; reproduce with: cd fuzz && cargo +$toolchain fuzz run TARGET artifacts/TARGET/FILE)" >&2
    exit 1
fi
