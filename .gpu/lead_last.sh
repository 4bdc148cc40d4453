#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
HYBRIDNA_FAIL_LOG=$OUT/fail.txt timeout 100 python3 -m pytest $(cat .gpu/rerun2.txt) -n 16 -v -p no:cacheprovider --tb=short > $OUT/rerun2.txt 2>&1; echo "rc=$?" >> $OUT/rerun2.txt
grep -E "PASSED|FAILED" $OUT/rerun2.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | cut -c1-150
[ -f $OUT/fail.txt ] && grep -E "^====|^E  " $OUT/fail.txt | cut -c1-220 | head -40
tail -1 $OUT/rerun2.txt
