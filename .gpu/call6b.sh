#!/bin/bash
# Session 6, second GPU call (<= ~560 s): the attention GPU tests (full shapes, now with the bigmem lock for the
# 13+ GB float64 references; helper attn7's dq-option and DKDV_FAST-extension tests), the SSD test file (the
# default changed after it last ran on a GPU), then helpers attn7's and ssd7b's timings. Failures' tracebacks: $OUT/fails*.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; git rev-parse --short HEAD
summ() { echo "$(grep -c ' PASSED' $1) passed, $(grep -c ' FAILED' $1) failed, $(grep -c ' ERROR' $1) errors"; grep -E " FAILED | ERROR " $1 | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | cut -c1-200 | sort -u | head; }
echo "== attention tests at $SECONDS s"
HYBRIDNA_FAIL_LOG=$OUT/fails_attn.txt timeout ${ATT:-130} python3 -m pytest tests/test_attention.py -k "gpu_full_shapes or gpu_dq_options or gpu_dkdv_fast_extensions" \
  -n 6 -p no:cacheprovider -v --tb=short > $OUT/attn_tests.txt 2>&1
summ $OUT/attn_tests.txt; tail -1 $OUT/attn_tests.txt
echo "== ssd tests at $SECONDS s"
HYBRIDNA_FAIL_LOG=$OUT/fails_ssd.txt timeout ${SSDT:-150} python3 -m pytest tests/test_ssd.py -n 8 -p no:cacheprovider -v --tb=short > $OUT/ssd_tests.txt 2>&1
summ $OUT/ssd_tests.txt; tail -1 $OUT/ssd_tests.txt
for f in $OUT/fails_*.txt; do [ -f $f ] && { echo "-- $f"; grep -E "^====|Error|error " $f | head -12 | cut -c1-220; }; done
echo "== attn7 at $SECONDS s"
mkdir -p $OUT/attn7; OUT=$OUT/attn7 ATTN7_S=${ATTN7_S:-100} bash .gpu/attn7.sh 2>&1 | grep -v -i warn | tail -40 | cut -c1-200
echo "== ssd7b at $SECONDS s"
mkdir -p $OUT/ssd7b; OUT=$OUT/ssd7b SSD7B_S=${SSD7B_S:-110} timeout 125 bash .gpu/ssd7b.sh 2>&1 | tail -45 | cut -c1-200
left=$(( ${END:-560} - SECONDS ))
[ $left -gt 40 ] && { echo "== attn_b2 at $SECONDS s"; timeout $left python3 .gpu/attn_b2.py 2>&1 | grep -v -i warn; }
echo "end at $SECONDS s"
