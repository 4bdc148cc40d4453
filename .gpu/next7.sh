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
tests() {
  HYBRIDNA_FAIL_LOG=$OUT/fails.txt python3 -m pytest tests/test_attention.py tests/test_ssd.py -m gpu \
    -k "gpu_dq_options or gpu_dkdv_fast_extensions or fwd7 or bwd7 or ds_split or scan7" -n 6 -p no:cacheprovider -v --tb=short > $OUT/tests.txt 2>&1
  echo "$(grep -c ' PASSED' $OUT/tests.txt) passed, $(grep -c ' FAILED' $OUT/tests.txt) failed"
  grep -E " FAILED " $OUT/tests.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head
  [ -f $OUT/fails.txt ] && grep -E "^====|Error|error " $OUT/fails.txt | head -12
}
export -f tests
on attn7 && part attn7 115 env ATTN7_S=100 bash .gpu/attn7.sh
on tests && part tests 130 bash -c tests
# Session 7's second call (PARTS="tests7b model7b attn scan7"): the new defaults (SSD chain for bf16 with grad,
# DKDV_FAST's extensions, DQ_FAST) in the GPU tests, the model step against session 6's defaults (the SSD config
# "s6 default" + an attention VARIANT naming session 6's features), the issue 5 table with its peers (.gpu/attn.sh)
tests7b() {
  HYBRIDNA_FAIL_LOG=$OUT/fails.txt python3 -m pytest tests/test_attention.py tests/test_ssd.py -m gpu \
    -k "gpu_full_shapes or gpu_dkdv_fast_extensions or gpu_dq_options or (full_shapes_gpu and B4)" -n 6 \
    -p no:cacheprovider -v --tb=short > $OUT/tests.txt 2>&1
  echo "$(grep -c ' PASSED' $OUT/tests.txt) passed, $(grep -c ' FAILED' $OUT/tests.txt) failed"
  grep -E " FAILED " $OUT/tests.txt | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | head
  [ -f $OUT/fails.txt ] && grep -E "^====|Error|error " $OUT/fails.txt | head -12
  python3 - $OUT/tests.txt <<'PY'
import re, sys
t = open(sys.argv[1]).read()
started = set(re.findall(r"(tests/\S+::\S+)", t)); done = set(re.findall(r"(?:PASSED|FAILED|SKIPPED|ERROR) (tests/\S+::\S+)", t))
print("not reported:", len(started - done), sorted(started - done)[:12])
PY
}
export -f tests7b
on tests7b && part tests7b ${T7B:-150} bash -c tests7b
on scan7 && part scan7 ${SCAN7_LIM:-170} env SCAN7_S=${SCAN7_S:-150} bash .gpu/scan7.sh
model7b() {
  for c in ${M7B:-new old}; do
    if [ $c = new ]; then a=""; s=""; else a="tma=fwd,dq;dq_delta=1;dkdv_fast="; s="s6 default"; fi
    HYBRIDNA_ATTN_VARIANT="$a" HYBRIDNA_SSD_CONFIG="$s" python3 bench/bench_model.py sweep 8x8192 1x32768 mlp_re=0 1x32768 \
      --rounds 2 2>/dev/null | python3 -u .gpu/model_print.py | sed "s/^/$c   /"
  done
}
export -f model7b
on model7b && part model7b ${M7B_S:-100} bash -c model7b
on attn && part attn 62 bash .gpu/attn.sh
echo "end at $SECONDS s"
