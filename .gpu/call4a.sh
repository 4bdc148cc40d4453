#!/bin/bash
# Session 4, GPU call A (<= ~430 s): (1) conv1d backward variants (issue 3; .gpu/conv4.py, 55 s),
# (2) the GPU demo (issue 8; .gpu/demo4.sh, <= 106 s), (3) the kernel test files whole on the GPU for the time left
# (attention: issue 5's unverified cases; conv1d with the new backward default; norm / swiglu refactors; train).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
O=$OUT; mkdir -p $O/conv4 $O/demo4 $O/tests
echo "######## conv4 $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
CONV4_VARIANTS=${CONV4_VARIANTS:-old,lean128_f2,lean256_f2,lean128} OUT=$O/conv4 timeout ${CONV_S:-55} python3 .gpu/conv4.py 2>&1 | grep -v -iE "warn|^\s*$" | cut -c1-260
echo "######## demo4 $(date -u +%T) at ${SECONDS} s"
OUT=$O/demo4 timeout ${DEMO_S:-108} bash .gpu/demo4.sh 2>&1 | grep -v -iE "warn|^\s*$" | cut -c1-260
echo "######## tests $(date -u +%T) at ${SECONDS} s"
OUT=$O/tests FILES="${FILES:-tests/test_attention.py tests/test_conv1d.py tests/test_norm.py tests/test_swiglu.py tests/test_train.py}" \
  T=$(( ${TOT:-425} - SECONDS )) N=14 bash .gpu/tests_all.sh 2>&1 | cut -c1-260
echo "######## end $(date -u +%T) at ${SECONDS} s"
