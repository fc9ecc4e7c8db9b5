#!/usr/bin/env bash
# valgrind memcheck over the native kernels (every ISA valgrind can decode:
# valgrind 3.19 has no AVX-512, so avx2 is forced). CPython and the dynamic
# loader report known false positives (small-int cache, rpath strncmp), so the
# run fails only on an error or a definite leak whose stack has a frame of ours
# (mhc_* functions), not counting cffi's one-time module initialisation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="$(python -c 'import sys; print(sys.executable)')"   # not a pyenv shim
log="$(mktemp)"
PYTHONMALLOC=malloc MHC_ARRAY_ISA=avx2 valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --num-callers=30 "$py" "$here/memcheck_workload.py" >"$log" 2>&1
grep -q '^done$' "$log" || { cat "$log"; exit 1; }
ours=$(awk '/^==[0-9]+== [A-Z].*(Invalid|uninitialised|definitely lost|Mismatched|overlap)/{blk=$0; inblk=1; next}
            inblk && /^==[0-9]+== $/ {if (blk ~ /mhc_/ && blk !~ /_cffi_init/) n++; inblk=0; next}
            inblk {blk = blk "\n" $0} END {print n+0}' "$log")
grep -E "ERROR SUMMARY|definitely lost:" "$log" | sed 's/^==[0-9]*== /valgrind (all, CPython included): /'
echo "errors or definite leaks with mhc_array frames: $ours"
rm -f "$log"
[ "$ours" -eq 0 ]
