#!/bin/bash
# SSD (issue 4), <= 150 s: GPU tests of tests/test_ssd.py (all of them, cut at 60 s), then variants at
# B8 T8192 bf16 (each checked against the fp64 reference first) next to the peer, then a per-kernel
# profile of the fastest variant and of the peer.
date -u +%T
timeout 60 python3 -m pytest tests/test_ssd.py -n 8 -v -rf -p no:cacheprovider --tb=short \
  > $OUT/ssd_tests.txt 2>&1; echo "rc=$?" >> $OUT/ssd_tests.txt
echo "tests: $(grep -c ' PASSED ' $OUT/ssd_tests.txt) passed, $(grep -c ' FAILED ' $OUT/ssd_tests.txt) failed, $(grep -c ' SKIPPED ' $OUT/ssd_tests.txt) skipped; $(tail -1 $OUT/ssd_tests.txt)"
grep -E " FAILED |^E  .*(mismatch|rel|Error)" $OUT/ssd_tests.txt | cut -c1-200 | head -14
date -u +%T
SSD_VARIANTS="default,hfirst nomask,hfirst cb16 nomask,hfirst cb16 nomask bwd4,cs64,nomask,hfirst,hfirst cb16 hin16 nomask,hfirst cb16 cbb16 nomask" \
PYTHONPATH=$PYTHONPATH:$PWD/.peers timeout 85 python3 bench/bench_ssd.py --sweep-only > $OUT/ssd_bench.txt 2>&1
echo "rc=$?" >> $OUT/ssd_bench.txt
grep -v "^\s*$" $OUT/ssd_bench.txt | grep -v -i "warn" | tail -50 | cut -c1-200
date -u +%T
