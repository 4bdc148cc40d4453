#!/bin/bash
# Issue 10, GRAD_SLABS (branch cats4; <= ~100 s on an H100): the backward cats of the split in_proj output
# (z|x|B|C|dt), conv output (x|B|C) and q|k|v gone (the ops' backwards write into slices of one buffer).
# One process: 300m, 1 x 32768, step time / host time / peak GiB with slabs=0 (torch.split, the old path)
# and slabs=1 (the new default) alternated after a warm-up row; then a profiled step of each: calls and
# time of CatArrayBatchedCopy (expected: 45 calls, ~6.6 ms -> 0) and of all copy kernels.
# Runs from the repo root; $OUT and PYTHONPATH set by the caller.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p $OUT
timeout ${CATS4_S:-95} python3 .gpu/cats4.py 2> $OUT/cats4_err.txt | python3 -u .gpu/model_print.py
echo "exit: ${PIPESTATUS[0]}"
grep -h -E "Error|error:" $OUT/cats4_err.txt | tail -4
echo "total $SECONDS s"
