#!/bin/bash
# Session 6, second GPU call: the attention failure's diagnosis (.gpu/attn_b2.py), helper attn7's variants, the SSD GPU tests (the default changed
# after they ran), then ssd6.py's default (bwd6) at B8 T8192 and the long shapes.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; git rev-parse --short HEAD
timeout 100 python3 .gpu/attn_b2.py 2>&1 | grep -v -i warn
echo "== attn7 at $SECONDS s"
mkdir -p $OUT/attn7; OUT=$OUT/attn7 ATTN7_S=${ATTN7_S:-100} bash .gpu/attn7.sh 2>&1 | grep -v -i warn | tail -40 | cut -c1-200
echo "== ssd tests at $SECONDS s"
HYBRIDNA_FAIL_LOG=$OUT/fails.txt timeout ${SSDT:-150} python3 -m pytest tests/test_ssd.py -n 8 -p no:cacheprovider -q -rfE --tb=short > $OUT/ssd_tests.txt 2>&1
tail -15 $OUT/ssd_tests.txt | cut -c1-220
echo "== ssd6 default at $SECONDS s"
mkdir -p $OUT/ssd6; SSD6_VARIANTS=default SSD6_GRAPH=1 SSD6_S=${SSD6_S:-90} OUT=$OUT/ssd6 timeout 100 python3 .gpu/ssd6.py 2>&1 | grep -v -iE "warn|USDT" | tail -25
echo "end at $SECONDS s"
