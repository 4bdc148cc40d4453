#!/bin/bash
# Next session's first GPU call (about 560 s on an H100; carry .whl, .peers, .gpu). Finishes the GPU test
# coverage that session 2 left cut, then the figures it left unmeasured. Everything streams into $OUT as it
# goes (at most ~8 files come back: keep it to the ones below). Run: bash .gpu/next_first.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
O=$OUT; date -u +%T
# 1) every test file on the GPU, two halves in parallel; -v so a cut run still names what passed/failed
( timeout 240 python3 -m pytest tests/test_attention.py tests/test_ssd.py -n 8 -v -p no:cacheprovider --tb=line > $O/t_a.txt 2>&1; echo "rc=$?" >> $O/t_a.txt ) &
( timeout 240 python3 -m pytest tests --ignore=tests/test_attention.py --ignore=tests/test_ssd.py -n 8 -v -p no:cacheprovider --tb=line > $O/t_b.txt 2>&1; echo "rc=$?" >> $O/t_b.txt ) &
wait
for f in t_a t_b; do echo "== $f: $(grep -c ' PASSED' $O/$f.txt) passed, $(grep -c ' FAILED' $O/$f.txt) failed; $(tail -1 $O/$f.txt)"; grep -E " FAILED |^E  |^/.*Error" $O/$f.txt | cut -c1-220 | head -12; done
date -u +%T
# 2) SSD main table vs mamba_ssm (3 shapes, fwd and fwd+bwd) and ssd_step
PYTHONPATH=$PYTHONPATH:$PWD/.peers timeout 90 python3 bench/bench_ssd.py 2>&1 | grep -v -i warn | tail -16
# 3) model: 1x131072 without checkpointing (issue 10's last row) and the demo end to end
timeout 90 python3 bench/bench_model.py sweep 1x131072 --rounds 2 --log $O/steps.jsonl 2> $O/bench_err.txt | python3 -u .gpu/model_print.py
timeout 90 python3 -m hybridna.demo --no-progress 2>&1 | tail -12
date -u +%T
