#!/bin/bash
# conv1d (issue 3) GPU round 2: (1) correctness tests except the per-config variant tests, (2) the
# benchmark sweep (defaults + every config in conv._fwd_configs() / conv._bwd_configs(), each checked
# against the fp64 reference at the timed shape before timing), (3) the per-config variant tests
# (seq_idx, states, gradients of states for every swept config) with the time left.
# Run from the repo root with $OUT set; whole script <= ~150 s. Full outputs under $OUT.
set -u
OUT=${OUT:-/tmp/conv-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
summ() {  # $1: pytest -v output file
    echo "$(grep -c ' PASSED' "$1") passed, $(grep -c ' FAILED' "$1") failed, $(grep -c ' SKIPPED' "$1") skipped:" \
         "$(tail -1 "$1" | cut -c1-90)"
    grep -E "^(FAILED|ERROR)| FAILED| ERROR" "$1" | cut -c1-200 | head -6
}
# -v into the files: a run cut by its timeout still shows which tests passed or failed
timeout 62 python3 -m pytest tests/test_conv1d.py -n 8 -v -rf -p no:cacheprovider -k "not variants" \
    --durations=10 > "$OUT/tests_core.txt" 2>&1
echo "core tests (all but per-config variants): rc=$? at $(el) s: $(summ "$OUT/tests_core.txt")"
left=$(( 128 - $(el) )); [ "$left" -gt 72 ] && left=72
timeout "$left" python3 bench/bench_conv1d.py --sweep --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? at $(el) s"
grep -v "skipped (" "$OUT/bench.txt" | grep -v "^\s*$" | cut -c1-220 | tail -66
left=$(( 147 - $(el) ))
if [ "$left" -gt 5 ]; then
    timeout "$left" python3 -m pytest tests/test_conv1d.py -n 8 -v -rf -p no:cacheprovider -k "variants" \
        > "$OUT/tests_variants.txt" 2>&1
    echo "variant tests: rc=$? at $(el) s: $(summ "$OUT/tests_variants.txt")"
fi
