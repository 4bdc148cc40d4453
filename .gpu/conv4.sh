#!/bin/bash
# conv1d (issue 3) session 4 (<= 100 s wall on an H100): (1) .gpu/conv4.py (<= 72 s): the backward
# variants (old default flags vs FUSE 1 / 2 levels, TAIL, CST, EVEN; CH 128 / 256; NS 8), each checked
# against fp64 at the timed shape and for determinism, then timed alone and through autograd (do_bench
# and CUDA graph), forward default and copy bandwidth in the same process, one line per variant as it
# goes; (2) tests/test_conv1d.py on the GPU for the time left (-n 12 -v into $OUT/tests.txt).
# Run from the repo root with $OUT and PYTHONPATH set. CONV4_VARIANTS=old,lean128_f2 narrows (1).
set -u
OUT=${OUT:-/tmp/conv4-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
timeout 72 python3 .gpu/conv4.py 2>&1 | tee "$OUT/conv4.txt" | grep -v "^\s*$" | cut -c1-240
echo "conv4.py rc=${PIPESTATUS[0]} at $(el) s"
left=$(( 97 - $(el) ))
if [ "$left" -gt 5 ]; then
  timeout "$left" python3 -m pytest tests/test_conv1d.py -n 12 -v -rf -p no:cacheprovider > "$OUT/tests.txt" 2>&1
  echo "tests (-n 12): rc=$? at $(el) s: $(grep -c ' PASSED' "$OUT/tests.txt") passed," \
       "$(grep -c ' FAILED' "$OUT/tests.txt") failed, $(grep -c ' SKIPPED' "$OUT/tests.txt") skipped;" \
       "$(grep -cE '^tests/' "$OUT/tests.txt") started: $(tail -1 "$OUT/tests.txt" | cut -c1-90)"
  grep -E "^(FAILED|ERROR)| FAILED| ERROR" "$OUT/tests.txt" | cut -c1-200 | head -8
fi
