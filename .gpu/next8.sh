#!/bin/bash
# Session 8's first GPU call (<= END, default 540 s; one H100 or H200, 16 cores): what session 7 could not measure.
# PARTS (default "attn ssd atests conv9 model mha tests", in order) picks; each part's log is $OUT/<part>/log.txt.
#   attn:  .gpu/attn.sh (~60 s): issue 5's table on the final defaults (DKDV_FAST's extensions, DQ_FAST) with SDPA FA2 /
#          cuDNN in the same run, the window and decode targets. On an H100 this is the figure the issue asks for.
#   mha:   .gpu/attn7.sh at the MHA shape only (B8 H16 L8192 D64, ~60 s): which dk/dv option made DKDV_FAST wrong at D64
#          MHA on the GPU (kreg with GROUP 1?), and the speed of the ones that check (issue 5's D64 rows are MHA)
#   model: the 300m step, the defaults against session 6's (SSD "s6 default" + the attention VARIANT naming session 6's
#          features) in two processes of one call: 8 x 8192, 1 x 32768, 1 x 32768 without the MLP recompute
#   ssd:   .gpu/ssd7f.sh (~120 s): the default against "s6 default" and the no-grad chain ("s7 chain nograd"; since
#          folded into the defaults) (fp64 checks, B8 / B2 / B1 timings, profile); session 8 also timed helper ssd8's
#          two-level scan here ("s8 sub...": slower, removed in session 9)
#   atests: tests/test_attention.py whole on the GPU (the final attention defaults; -n 12, 140 s)
#   conv9: .gpu/conv9.sh (<= 100 s): helper conv9's wave-sized conv1d grids (UNEVEN) against the default (issue 3)
#   tests: TFILES (default tests/test_ssd.py: the scan split default) on the GPU, -n 12, what is left of END
source .gpu/parts.sh
PARTS=" ${PARTS:-attn ssd atests conv9 model mha tests} "
on attn && part attn 62 bash .gpu/attn.sh
on ssd && part ssd 130 env SSD7F_S=115 SSD7F_VARIANTS="default,s6 default,s7 chain nograd" bash .gpu/ssd7f.sh
on atests && part atests 150 env FILES=tests/test_attention.py T=140 N=12 bash .gpu/tests_all.sh
on conv9 && part conv9 102 env CONV9_S=95 bash .gpu/conv9.sh
on model && part model 110 bash -c model_vs_s6
on mha && part mha 70 env ATTN7_SHAPES=1 ATTN7_S=60 bash .gpu/attn7.sh
on tests && part tests $(( END - SECONDS - 5 )) env FILES=${TFILES:-tests/test_ssd.py} T=$(( END - SECONDS - 25 )) N=12 bash .gpu/tests_all.sh
echo "end at $SECONDS s"
