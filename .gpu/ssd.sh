#!/bin/bash
# SSD (issue 4), <= 150 s: the sweep variants' kernels compile in the background (one process each,
# Triton's disk cache) while the GPU tests of tests/test_ssd.py run (all, cut at 55 s); then every
# variant at B8 T8192 bf16, each first checked against the fp64 reference; a per-kernel profile of
# the fastest; the peer (with our default again) last.
V="default,hfirst nomask,hfirst cb16 nomask,hfirst cb16 nomask fused,hfirst cb16 nomask fused2,hfirst cb16 nomask fused2 sb2,hfirst cb16 nomask fused2 sb3,fused2,hfirst cb16 nomask bwd4,cs64,hfirst cb16 hin16 nomask,hfirst cb16 cbb16 nomask"
date -u +%T
mkdir -p $OUT/warm
IFS=',' read -ra VS <<< "$V"
for v in "${VS[@]}"; do
  SSD_VARIANTS="$v" timeout 60 python3 bench/bench_ssd.py --warm > "$OUT/warm/${v// /_}.txt" 2>&1 &
done
timeout 55 python3 -m pytest tests/test_ssd.py -n 8 -v -rf -p no:cacheprovider --tb=short \
  > $OUT/ssd_tests.txt 2>&1; echo "rc=$?" >> $OUT/ssd_tests.txt
echo "tests: $(grep -c ' PASSED ' $OUT/ssd_tests.txt) passed, $(grep -c ' FAILED ' $OUT/ssd_tests.txt) failed, $(grep -c ' SKIPPED ' $OUT/ssd_tests.txt) skipped; $(tail -1 $OUT/ssd_tests.txt)"
grep -E " FAILED |^E  .*(mismatch|rel|Error)" $OUT/ssd_tests.txt | cut -c1-200 | head -14
wait
date -u +%T
SSD_VARIANTS="$V" PYTHONPATH=$PYTHONPATH:$PWD/.peers timeout 85 python3 bench/bench_ssd.py --sweep-only > $OUT/ssd_bench.txt 2>&1
echo "rc=$?" >> $OUT/ssd_bench.txt
grep -v "^\s*$" $OUT/ssd_bench.txt | grep -v -i "warn" | tail -50 | cut -c1-200
date -u +%T
