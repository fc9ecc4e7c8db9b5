#!/usr/bin/env bash
# Build the libFuzzer harness of the C ABI with AddressSanitizer + UndefinedBehaviorSanitizer
# and run it.  Usage: native/fuzz/run.sh SECONDS [FAMILY]
#   FAMILY: 0 Sinkhorn, 1 distances (rows, pairwise), 2 mHC connection (pre, post),
#   3 curvature (transport, exact transport, unit-length exact W1, graph costs); omitted: all.
# Needs clang with libFuzzer (Debian: clang-14 libclang-rt-14-dev). Any crash, sanitizer
# report or failed check stops the run with a non-zero status and leaves the input in
# native/fuzz/out/.
set -euo pipefail
secs="${1:-60}"
family="${2:--1}"
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../src"
cc="${CC_FUZZ:-$(command -v clang-14 || command -v clang)}"
out="$here/out"
mkdir -p "$out/corpus-$family"
bin="$out/fuzz_abi"
[ -n "${MHC_FUZZ_NO_BUILD:-}" ] && [ -x "$bin" ] || "$cc" -O1 -g -std=c11 -D_GNU_SOURCE -pthread -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DMHC_ARRAY_VERSION='"fuzz"' -I"$here/../include" -I"$src" \
    "$here/fuzz_abi.c" "$src"/*.c -lm -o "$bin"
cd "$out"
MHC_FUZZ_FAMILY="$family" ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    "$bin" -max_total_time="$secs" -max_len=4096 -timeout=20 -print_final_stats=1 \
    "corpus-$family" >"fuzz-$family.log" 2>&1 || status=$?
grep -E "^#[0-9]+.*cov:" "fuzz-$family.log" | tail -n 1 || true
grep -vE "^#[0-9]+|Uses: |dictionary" "fuzz-$family.log" | tail -n 40
echo "corpus: $(ls "corpus-$family" | wc -l) inputs; full log: $out/fuzz-$family.log"
exit "${status:-0}"
