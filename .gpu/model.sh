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
# Order: new 1x32768 (autotune), 8x8192, 1x65536 (memory targets <= 45 GiB); m0 at 1x32768, 8x8192, 1x65536;
# m0.75 at 1x65536; m1 with n0 and with c0 at 1x32768; old 1x32768 (baseline, same process); profile of
# new 1x32768; the new step captured in one CUDA graph at 1x32768 (host cost); new 1x131072 last (it may
# run out of memory, which spoiled every later row in round 1).
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout 78 python3 bench/bench_model.py sweep 1x32768 8x8192 1x65536 mlp_re=0 1x32768 8x8192 1x65536 \
  mlp_re=0.75 1x65536 mlp_re=1 normh=0 1x32768 normh=1 conv_re=0 1x32768 conv_re=1 old 1x32768 new \
  profile:1x32768 graph:1x32768 1x131072 \
  --rounds 3 --log /tmp/steps.jsonl --profile-dir /tmp/prof 2> /tmp/bench_err.txt | python3 -u .gpu/model_print.py
echo "bench exit: ${PIPESTATUS[0]}"
grep -h -E "Error|error:" /tmp/bench_err.txt | tail -4
echo "total $SECONDS s"
