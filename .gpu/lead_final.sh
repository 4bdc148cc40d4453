#!/bin/bash
# lead slot of the final call: re-run the tests that failed (or never reported) in the whole-suite run, -n 8,
# big tests alone under the conftest lock; failures logged as they happen.
HYBRIDNA_FAIL_LOG=$OUT/fail.txt timeout 150 python3 -m pytest $(cat .gpu/rerun.txt) -n 8 -v -p no:cacheprovider --tb=short > $OUT/rerun.txt 2>&1; echo "rc=$?" >> $OUT/rerun.txt
echo "== rerun: $(grep -c ' PASSED' $OUT/rerun.txt) passed, $(grep -c ' FAILED' $OUT/rerun.txt) failed; $(tail -2 $OUT/rerun.txt | tr '\n' ' ')"
grep -E " FAILED " $OUT/rerun.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head -30
[ -f $OUT/fail.txt ] && grep -E "^====|^E  " $OUT/fail.txt | cut -c1-220 | head -60
