#!/bin/bash
# SSD (issue 4), <= 150 s. The sweep variants' kernels compile in background processes (Triton's disk
# cache) while the GPU tests run: first the bf16 variant tests (they must finish, so their failure
# messages print), then the rest of tests/test_ssd.py (cut at 40 s; counts printed even when cut).
# Then every variant at B8 T8192 bf16, each first checked against the fp64 reference (B1 T4096), a
# per-kernel profile of the fastest, and the peer with our default again last.
V="default,old default,xw0,fused2,fused2 n64,tsum,fused2 tsum,sb3,rtf32,stages3,scan BK32,dbc BM128 w8,combo"
date -u +%T
mkdir -p $OUT/warm
IFS=',' read -ra VS <<< "$V"
for v in "${VS[@]}"; do
  SSD_VARIANTS="$v" timeout 70 python3 bench/bench_ssd.py --warm > "$OUT/warm/${v// /_}.txt" 2>&1 &
done
K="bf16_gpu or single_sequence"
timeout 45 python3 -m pytest tests/test_ssd.py -n 8 -q -rf -p no:cacheprovider --tb=line -k "$K" \
  > $OUT/ssd_tests_variants.txt 2>&1; echo "rc=$?" >> $OUT/ssd_tests_variants.txt
grep -E "^FAILED|passed|failed|rc=" $OUT/ssd_tests_variants.txt | cut -c1-230 | tail -14
timeout 40 python3 -m pytest tests/test_ssd.py -n 8 -v -p no:cacheprovider --tb=line -k "not ($K)" \
  > $OUT/ssd_tests.txt 2>&1; echo "rc=$?" >> $OUT/ssd_tests.txt
echo "other tests: $(grep -c ' PASSED ' $OUT/ssd_tests.txt) passed, $(grep -c ' FAILED ' $OUT/ssd_tests.txt) failed, $(grep -c ' SKIPPED ' $OUT/ssd_tests.txt) skipped; $(tail -1 $OUT/ssd_tests.txt)"
grep -E " FAILED |^FAILED" $OUT/ssd_tests.txt | cut -c1-200 | head -8
wait
date -u +%T
SSD_VARIANTS="$V" PYTHONPATH=$PYTHONPATH:$PWD/.peers timeout 62 python3 bench/bench_ssd.py --sweep-only > $OUT/ssd_bench.txt 2>&1
echo "rc=$?" >> $OUT/ssd_bench.txt
grep -v "^\s*$" $OUT/ssd_bench.txt | grep -v -i "warn" | tail -40 | cut -c1-200
date -u +%T
