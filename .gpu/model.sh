#!/bin/bash
# Issue 10, session 3 round 2 (<= 80 s, no tests: the lead runs tests/ separately): the 300m training step
# (fwd + bwd + fused AdamW, bf16 autocast) in ONE process so the kernels compile/autotune once; every row
# printed as soon as it is done; nothing written under $OUT.
# Switches (hybridna.model, flipped between rows of the same process): s = FUSED_SWIGLU (fused SwiGLU
# kernels + norm2/gate_up/SwiGLU/down as one autograd node), m = MLP_RECOMPUTE (gate_up output recomputed
# in the backward; a fraction = that share of the blocks), c = CONV_RECOMPUTE (conv output recomputed for
# the SSD backward; round 1 kept a reference to it, so it saved nothing there: fixed), n = norm + linear
# backward takes the normed activation from the norm's backward pass. "new" = s1 m1 c1 n1 (the defaults),
# "old" = s0 m0 c0 n0 (session 2's model).
# i = INPROJ_RECOMPUTE (opt-in): the Mamba in_proj output recomputed from the residual stream in the backward.
# Order: new 1x32768 (autotune), 8x8192, 1x65536 (memory targets <= 45 GiB); m0 at 1x32768, 8x8192, 1x65536;
# n0 and c0 at 1x32768; old 1x32768 (baseline, same process); profile of new 1x32768; i1 at 1x32768,
# 1x65536 and 1x131072 (the no-checkpointing target); last, the default step captured in one CUDA graph
# at 1x32768 (host cost). 1x131072 without i1 is not run: it would not fit (estimated from 1x65536), and
# an out-of-memory spoiled every later row in round 1.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout 78 python3 bench/bench_model.py sweep 1x32768 8x8192 1x65536 mlp_re=0 1x32768 8x8192 1x65536 mlp_re=1 \
  normh=0 1x32768 normh=1 conv_re=0 1x32768 conv_re=1 old 1x32768 new profile:1x32768 \
  inproj_re=1 1x32768 1x65536 1x131072 inproj_re=0 graph:1x32768 \
  --rounds 3 --log /tmp/steps.jsonl --profile-dir /tmp/prof 2> /tmp/bench_err.txt | python3 -u .gpu/model_print.py
echo "bench exit: ${PIPESTATUS[0]}"
grep -h -E "Error|error:" /tmp/bench_err.txt | tail -4
echo "total $SECONDS s"
