#!/bin/bash
# Session 3, lead call 1: GPU tests of everything but attention/ssd (their helpers run those), demo end to end,
# pretrain 300m eager vs --compile, and the CPU-light bench files on the GPU (issue 9 coverage).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
O=$OUT; date -u +%T
( timeout 200 python3 -m pytest tests --ignore=tests/test_attention.py --ignore=tests/test_ssd.py -n 12 -v -p no:cacheprovider --tb=short > $O/t_b.txt 2>&1; echo "rc=$?" >> $O/t_b.txt ) &
( timeout 150 python3 -m hybridna.demo --no-progress > $O/demo.txt 2>&1; echo "rc=$?" >> $O/demo.txt ) &
wait
echo "== tests: $(grep -c ' PASSED' $O/t_b.txt) passed, $(grep -c ' FAILED' $O/t_b.txt) failed, $(grep -c ' SKIPPED' $O/t_b.txt) skipped; $(tail -2 $O/t_b.txt | tr '\n' ' ')"
grep -E " FAILED |^E  " $O/t_b.txt | cut -c1-250 | head -20
python3 - $O/t_b.txt <<'PY'
import re,sys
t=open(sys.argv[1]).read()
started=set(re.findall(r"(tests/\S+::\S+)", t)); done=set(re.findall(r"(?:PASSED|FAILED|SKIPPED|ERROR) (tests/\S+::\S+)", t))
print("not reported:", len(started-done), sorted(started-done)[:15])
PY
echo "== demo"; tail -14 $O/demo.txt
date -u +%T
python3 -m hybridna.cli data build hybridna/genomes/lambda_virus.fa.gz --out /tmp/lam.zarr --quiet
for c in "" "--compile"; do
timeout 100 python3 -m hybridna.cli pretrain --preset 300m --data /tmp/lam.zarr --out /tmp/r300$c --steps 12 --seq-len 8192 --micro-batch 4 --log-every 2 --val-every 1000 --save-every 1000 --device cuda --no-progress --no-plot $c > $O/pre$c.txt 2>&1; echo "rc=$?" >> $O/pre$c.txt; echo "== pretrain $c"; grep -v -i warn $O/pre$c.txt | tail -5; tail -2 /tmp/r300$c/metrics.jsonl
done
date -u +%T
timeout 150 python3 -m pytest bench/bench_conv1d.py bench/bench_data.py bench/bench_generation.py --benchmark-only -p no:cacheprovider -q -rfs --benchmark-columns=median,rounds --benchmark-json $O/bench1.json > $O/bench1.txt 2>&1; echo "rc=$?" >> $O/bench1.txt
grep -v -i "warn" $O/bench1.txt | tail -45 | cut -c1-200
date -u +%T
