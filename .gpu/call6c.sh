#!/bin/bash
# Session 6, last GPU call (<= ~310 s; call6b's machine was taken back before it returned anything): the attention
# full-shape GPU tests (the default path; bigmem shapes alone), then helpers ssd7f's and ssd7b's checks + timings.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; git rev-parse --short HEAD
echo "== attention full-shape tests at $SECONDS s"
HYBRIDNA_FAIL_LOG=$OUT/fails_attn.txt timeout ${ATT:-75} python3 -m pytest tests/test_attention.py -k "gpu_full_shapes" \
  -n 6 -p no:cacheprovider -v --tb=short > $OUT/attn_tests.txt 2>&1
echo "$(grep -c ' PASSED' $OUT/attn_tests.txt) passed, $(grep -c ' FAILED' $OUT/attn_tests.txt) failed"
grep -E " FAILED " $OUT/attn_tests.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head
[ -f $OUT/fails_attn.txt ] && grep -E "^====|Error|error " $OUT/fails_attn.txt | head -12 | cut -c1-220
echo "== ssd7f at $SECONDS s"
mkdir -p $OUT/ssd7f; OUT=$OUT/ssd7f SSD7F_S=${SSD7F_S:-105} timeout 118 bash .gpu/ssd7f.sh 2>&1 | tail -45 | cut -c1-200
echo "== ssd7b at $SECONDS s"
mkdir -p $OUT/ssd7b; OUT=$OUT/ssd7b SSD7B_S=${SSD7B_S:-105} timeout 118 bash .gpu/ssd7b.sh 2>&1 | tail -45 | cut -c1-200
echo "end at $SECONDS s"
