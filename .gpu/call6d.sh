#!/bin/bash
# Next session's first GPU call (<= ~180 s): session 6's SSD defaults (bwd7 ds dcb16 ftz) and the opt-in state chain
# ("s6 chain": with grad, where batch x heads >= 64) against session 5's ("s5 default") via .gpu/ssd7b.py (fp64 checks at B1 T4096
# with and without z / initial states, the difference at B8 T8192, timings B8 / B2 / B1), then the SSD GPU tests
# of the default paths (the helpers' variant sweeps left out).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $OUT/ssd; OUT=$OUT/ssd SSD7B_VARIANTS="default,s5 default,s6 chain" SSD7B_S=${S:-70} timeout 80 bash .gpu/ssd7b.sh 2>&1 | tail -40 | cut -c1-230
echo "== ssd tests at $SECONDS s"
HYBRIDNA_FAIL_LOG=$OUT/fails_ssd.txt timeout ${SSDT:-85} python3 -m pytest tests/test_ssd.py -m gpu -k "not fwd7 and not bwd7_bf16 and not sweep" \
  -n 8 -p no:cacheprovider -v --tb=short > $OUT/ssd_tests.txt 2>&1
echo "$(grep -c ' PASSED' $OUT/ssd_tests.txt) passed, $(grep -c ' FAILED' $OUT/ssd_tests.txt) failed"; tail -1 $OUT/ssd_tests.txt
[ -f $OUT/fails_ssd.txt ] && grep -E "^====|Error|error " $OUT/fails_ssd.txt | head -12 | cut -c1-220
echo "end at $SECONDS s"
