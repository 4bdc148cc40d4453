#!/bin/bash
# Session 9's first GPU call (<= END, default 560 s; one H100 or H200, 16 cores): what session 8 fixed or added without
# a GPU left to run it, then the whole suite. PARTS (default "fixed suite", in order); each part's log is
# $OUT/<part>/log.txt (at most 8 files come back from $OUT: session 8 lost two parts' logs that way; this writes 6).
# First, on the machine that calls `run`: `bash ../shared/gpu/wheels.sh` (fills .whl, which git ignores; a new
# checkout has none); the call carries [".whl"].
#   fixed: the nine tests session 8 fixed for the GPU (they had only run under the interpreter), the opt-in D64 MHA
#          dk/dv (test_gpu_dkdv_fast_mha64: flip dkdv_fast's default to include "mha64" if it passes), the no-grad
#          chain default at batch x heads 128 (test_kernel_nograd_chain_default_bf16_gpu), the one attention case no
#          GPU run has reached (D160 W7 fp32); -n 8, ~100 s
#   suite: the whole tests/ on the GPU (.gpu/tests_all.sh, -n 12, what is left of END): before resolving issue 5
#   ssd (opt-in, for a second call): the chain kernel's LEAN offsets ("s9 chain lean": 4528 instead of 5408 SASS
#          instructions), the rank-1 decay scan under a 128-register cap (never timed on top of session 7's scan)
#          and the no-grad chain's blocks, against the default and session 7's default (.gpu/ssd7f.sh, ~120 s):
#          issue 4's no-grad forward
source .gpu/parts.sh
END=${END:-560}
PARTS=" ${PARTS:-fixed suite} "
fixed_tests() {
  local T=tests/test_ssd.py A=tests/test_attention.py
  HYBRIDNA_FAIL_LOG=$OUT/fails.txt python3 -m pytest -n 8 -p no:cacheprovider -v --tb=short \
    "$T::test_kernel_fwd7_bitwise_equal_default" "$T::test_kernel_scan7_variants" \
    "$T::test_reverse_state_kernels_split_planes" "$T::test_state_chain_grad_gating" \
    "$T::test_state_chain_nograd_gating" "$T::test_kernel_nograd_chain_default_bf16_gpu" \
    "$A::test_dq_options_reach_the_kernel" "$A::test_gpu_dkdv_fast_mha64" \
    "$A::test_kernel_matches_reference[B1-Lq20-Lk20-H2:2-D160-causal-W7-fp32]" > $OUT/tests.txt 2>&1
  echo "rc=$? $(grep -c ' PASSED' $OUT/tests.txt) passed, $(grep -c ' FAILED' $OUT/tests.txt) failed, \
$(grep -c ' SKIPPED' $OUT/tests.txt) skipped"
  grep -E " FAILED |^E  " $OUT/tests.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | cut -c1-200 | sort -u | head -20
}
export -f fixed_tests
on fixed && part fixed 110 bash -c fixed_tests
on suite && part suite $(( END - SECONDS - 5 )) env T=$(( END - SECONDS - 25 )) N=12 bash .gpu/tests_all.sh
on ssd && part ssd 140 env SSD7F_S=130 SSD7F_VARIANTS="default,s9 chain lean,s9 chain lean nograd n64 w4,s7 default,scan7 r1 mr128,scan7 r1 ftz mr128,s8 chain nograd n64 w4,s8 chain nograd n64 w4 mr128,s8 chain nograd64 n64 w4" bash .gpu/ssd7f.sh
echo "end at $SECONDS s"
