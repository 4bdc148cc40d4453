#!/bin/bash
# Issue 10, session 3 round 1 (<= 120 s): the 300m training step (fwd + bwd + fused AdamW, bf16 autocast)
# in ONE process so the kernels compile/autotune once; every row printed as soon as it is done.
# Switches (hybridna.model, flipped between rows of the same process): s = FUSED_SWIGLU (fused SwiGLU
# kernels + norm2/gate_up/SwiGLU/down as one autograd node), m = MLP_RECOMPUTE (gate_up output recomputed
# in the backward), c = CONV_RECOMPUTE (conv output recomputed for the SSD backward). "old" = s0 m0 c0
# (session 2's model), "new" = s1 m1 c1 (the new defaults).
# Order (most important first; the whole script must end within 120 s): GPU check of the new model vs
# fp32 references (1x2048); new 1x32768 (autotune; overlaps the tests, so timed again later); old 1x32768
# (same card, same process); new 1x32768, 8x8192, 1x65536;
# profile of new 1x32768; new 1x131072 (no checkpointing); s1 m0 c1 (without the MLP recompute) at
# 1x32768, 8x8192, 1x65536; n0 (norm + linear backward with the separate recompute pass of session 2)
# at 1x32768; s1 m0 c0 n1 at 1x32768; last, the new defaults with the whole step captured in one CUDA
# graph (no host work) at 1x32768. n = hybridna_kernels.norm.linear.BWD_WRITES_H ("old" = n0).
# In parallel: GPU tests of what this branch touches (-v into $OUT/tests.txt, the one file; counts and
# FAILED lines printed). Each timed row also gives the host time of a step (until its last launch returns,
# no sync): host close to step means host-bound.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out-model}; mkdir -p $OUT
( timeout 70 python3 -m pytest tests/test_swiglu.py tests/test_norm.py tests/test_model.py tests/test_model_copies.py \
    tests/test_compile.py -n 8 -v -p no:cacheprovider --tb=short > $OUT/tests.txt 2>&1
  echo "tests rc=$?" >> $OUT/tests.txt; echo "[tests finished at ${SECONDS} s; rows after this ran alone on the GPU]" ) &
TP=$!
timeout 108 python3 bench/bench_model.py sweep check 1x32768 old 1x32768 new 1x32768 8x8192 1x65536 profile:1x32768 1x131072 \
  mlp_re=0 1x32768 8x8192 1x65536 normh=0 1x32768 normh=1 conv_re=0 1x32768 new graph:1x32768 \
  --rounds 3 --log /tmp/steps.jsonl --profile-dir /tmp/prof 2> /tmp/bench_err.txt | python3 -u .gpu/model_print.py
echo "bench exit: ${PIPESTATUS[0]}"
grep -h -E "Error|error:" /tmp/bench_err.txt | tail -4
wait $TP
echo "tests: $(grep -c ' PASSED' $OUT/tests.txt) passed, $(grep -c ' FAILED' $OUT/tests.txt) failed, $(grep -c ' SKIPPED' $OUT/tests.txt) skipped; $(tail -1 $OUT/tests.txt)"
grep -E " FAILED|^E  " $OUT/tests.txt | cut -c1-200 | head -12
echo "total $SECONDS s"
