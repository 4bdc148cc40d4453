#!/bin/bash
# conv1d (issue 3) GPU round 2 (<= 120 s wall): (1) the benchmark, printing as it goes: defaults and
# F.conv1d for every shape first, then the sweep over conv._fwd_configs() / conv._bwd_configs() (each
# config checked against the fp64 reference at the timed shape before timing); (2) the FULL GPU test
# file tests/test_conv1d.py (-n 16) as the final verification. Run from the repo root with $OUT set.
set -u
OUT=${OUT:-/tmp/conv-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
timeout 52 python3 bench/bench_conv1d.py --sweep --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" \
    | grep -v "skipped (" | grep -v "^\s*$" | cut -c1-200
echo "bench rc=${PIPESTATUS[0]} at $(el) s"
left=$(( 117 - $(el) ))
# -v into the file: a run cut by the timeout still shows which tests passed or failed
timeout "$left" python3 -m pytest tests/test_conv1d.py -n 16 -v -rf -p no:cacheprovider > "$OUT/tests.txt" 2>&1
echo "tests (full file, -n 16): rc=$? at $(el) s: $(grep -c ' PASSED' "$OUT/tests.txt") passed," \
     "$(grep -c ' FAILED' "$OUT/tests.txt") failed, $(grep -c ' SKIPPED' "$OUT/tests.txt") skipped;" \
     "$(grep -cE '^tests/' "$OUT/tests.txt") started: $(tail -1 "$OUT/tests.txt" | cut -c1-90)"
grep -E "^(FAILED|ERROR)| FAILED| ERROR" "$OUT/tests.txt" | cut -c1-200 | head -8
