#!/bin/bash
# SSD (issue 4), <= 150 s: GPU tests of tests/test_ssd.py, then variants at B8 T8192 bf16 (each checked
# against the fp64 reference first) next to the peer, then a per-kernel profile of the fastest.
date -u +%T
timeout 80 python3 -m pytest tests/test_ssd.py -n 8 -q -rf -p no:cacheprovider --tb=short \
  > $OUT/ssd_tests.txt 2>&1; echo "rc=$?" >> $OUT/ssd_tests.txt
grep -E "^FAILED|^ERROR|passed|failed|rc=" $OUT/ssd_tests.txt | cut -c1-220 | tail -14
date -u +%T
SSD_VARIANTS="default,cs64,nomask,cb16,cb16 nomask,cb16 hin16 nomask,cb16 hin16 nomask w8,scan BK32,bwd warps4" \
PYTHONPATH=$PYTHONPATH:$PWD/.peers timeout 100 python3 bench/bench_ssd.py --sweep-only > $OUT/ssd_bench.txt 2>&1
echo "rc=$?" >> $OUT/ssd_bench.txt
grep -v "^\s*$" $OUT/ssd_bench.txt | grep -v Warning | tail -50 | cut -c1-200
date -u +%T
