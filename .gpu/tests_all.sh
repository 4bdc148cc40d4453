#!/bin/bash
# The whole tests/ directory on the GPU (FILES narrows it; K is -k, default "not inductor": whole-model inductor compiles never
# finish there; -n ${N:-14}; bigmem tests run alone under conftest's lock; failures stream into $OUT/fails.txt).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HYBRIDNA_FAIL_LOG=$OUT/fails.txt
date -u +%T
timeout ${T:-520} python3 -m pytest ${FILES:-tests} -k "${K:-not inductor}" -n ${N:-14} -v -p no:cacheprovider --tb=short --durations=15 > $OUT/tests.txt 2>&1; echo "rc=$?" >> $OUT/tests.txt
date -u +%T
echo "== $(grep -c ' PASSED' $OUT/tests.txt) passed, $(grep -c ' FAILED' $OUT/tests.txt) failed, $(grep -c ' SKIPPED' $OUT/tests.txt) skipped, $(grep -c ' ERROR' $OUT/tests.txt) errors; $(tail -3 $OUT/tests.txt | tr '\n' ' ')"
grep -E " FAILED | ERROR " $OUT/tests.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | cut -c1-200 | sort -u | head -40
python3 - $OUT/tests.txt <<'PY'
import re, sys, collections
t = open(sys.argv[1]).read()
started = set(re.findall(r"(tests/\S+::\S+)", t)); done = set(re.findall(r"(?:PASSED|FAILED|SKIPPED|ERROR) (tests/\S+::\S+)", t))
miss = sorted(started - done); by = collections.Counter(m.split("::")[0] for m in miss)
print("not reported:", len(miss), dict(by)); print("\n".join(miss[:30]))
PY
grep -A20 "slowest 15" $OUT/tests.txt | head -18
