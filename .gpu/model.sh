#!/bin/bash
# Issue 10, round 2 (<= 150 s): the 300m training step (fwd + bwd + fused AdamW, bf16 autocast) in ONE
# process so the kernels compile/autotune once; every row printed as soon as it is done.
# Order: GPU check of the model (kernels under bf16 autocast vs fp32 references, 1 x 2048), fused
# norms eager at 1x32768, 8x8192, 1x65536, a kernel profile at 1x32768, the unfused baseline
# (HYBRIDNA_FUSED_NORMS=0 path, same process, same card) at 1x32768, selective checkpointing of each
# block's norm2 + MLP at 1x65536, then per-block torch.compile at 1x32768. In parallel: tests/test_norm.py (the full file, bf16 on the GPU), -n 6 to leave CPU to the bench.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out-model}; mkdir -p $OUT
( timeout 110 python3 -m pytest tests/test_norm.py -n 6 -q -rf -p no:cacheprovider > $OUT/tests.txt 2>&1
  echo "test_norm rc=$?" >> $OUT/tests.txt ) &
TP=$!
timeout 135 python3 bench/bench_model.py sweep check 1x32768 8x8192 1x65536 profile:1x32768 unfused 1x32768 fused \
  ckpt_mlp 1x65536 ckpt_off compile 1x32768 --rounds 3 --log $OUT/steps.jsonl --profile-dir $OUT/prof 2> $OUT/bench_err.txt | python3 -u .gpu/model_print.py
echo "bench exit: ${PIPESTATUS[0]}"
grep -h -E "Error|error:" $OUT/bench_err.txt | tail -4
wait $TP
tail -4 $OUT/tests.txt
echo "total $SECONDS s"
