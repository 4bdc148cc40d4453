#!/bin/bash
# Next session's first GPU call (<= ~540 s, H100): what session 6 could not measure. PARTS (default all: ssd model attn7
# tests) picks; each part has its own limit and its log in $OUT/<part>/log.txt.
#   ssd:   .gpu/call6d.sh (session 6's SSD default vs session 5's "s5 default" and the opt-in "s6 chain": fp64 checks,
#          timings B8 / B2 / B1; then the SSD GPU tests of the default paths)
#   model: the 300m step at 8 x 8192 and 1 x 32768 with the default, "s6 chain" and "s5 default" (HYBRIDNA_SSD_CONFIG)
#   attn7: helper attn7's dq options and DKDV_FAST extensions (.gpu/attn7.sh)
#   tests: the helpers' new GPU tests (attention dq options / DKDV_FAST extensions, SSD fwd7 / bwd7 / ds_split / scan7)
#   scan7: helper scan7's forward-scan variants (.gpu/scan7.sh, ~160 s): not in the default PARTS (the call limit is
#          600 s); run it in a second call: PARTS=scan7 bash .gpu/next7.sh
source .gpu/parts.sh
PARTS=" ${PARTS:-ssd model attn7 tests} "
on ssd && part ssd 185 bash .gpu/call6d.sh
model() {
  for c in "" "s6 chain" "s5 default"; do
    items="8x8192 1x32768"  # the default and "s6 chain" also with the gradient slabs and without the MLP recompute
    [ "$c" != "s5 default" ] && items="$items slabs=1 8x8192 1x32768 mlp_re=0 1x32768"
    HYBRIDNA_SSD_CONFIG="$c" python3 bench/bench_model.py sweep $items --rounds 2 2>/dev/null \
      | python3 -u .gpu/model_print.py | sed "s/^/${c:-default}   /"
  done
}
export -f model
on model && part model 150 bash -c model
on attn7 && part attn7 115 env ATTN7_S=100 bash .gpu/attn7.sh
on tests && part tests 130 bash -c "gpu_tests 'gpu_dq_options or gpu_dkdv_fast_extensions or fwd7 or bwd7 or ds_split or scan7'"
# Session 7's second call (PARTS="tests7b model7b attn scan7"): the new defaults (SSD chain for bf16 with grad,
# DKDV_FAST's extensions, DQ_FAST) in the GPU tests, the model step against session 6's defaults (the SSD config
# "s6 default" + an attention VARIANT naming session 6's features), the issue 5 table with its peers (.gpu/attn.sh)
on tests7b && part tests7b ${T7B:-150} bash -c "gpu_tests 'gpu_full_shapes or gpu_dkdv_fast_extensions or gpu_dq_options or (full_shapes_gpu and B4)'"
on scan7 && part scan7 ${SCAN7_LIM:-170} env SCAN7_S=${SCAN7_S:-150} bash .gpu/scan7.sh
on model7b && part model7b ${M7B_S:-100} bash -c "model_vs_s6 ${M7B:-new old}"
on attn && part attn 62 bash .gpu/attn.sh
echo "end at $SECONDS s"
