#!/bin/bash
# Session 5's last GPU call (<= ~570 s, H100 or H200): the helpers' variant timings (attn6, ssd6, conv6), the
# GPU tests the first call did not reach (.gpu/rerun5.txt) plus the new variants' GPU tests (-n TESTS_N, default
# 6: each attention case builds float64 references of several GiB), the model step with the defaults against
# the old dk/dv config (AV), then the bench rows the whole-suite call left (HYBRIDNA_BENCH_SKIP_DONE), while time
# lasts. PARTS (default all: attn6 ssd6 conv6 tests model bench) picks; each part has its own hard limit and
# its log in $OUT/<part>/log.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=$OUT
END=${END:-560}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | head -1; git rev-parse --short HEAD
part() {  # part NAME LIMIT_S TAIL_LINES command...
  local name=$1 lim=$2 tl=$3; shift 3
  local left=$(( END - SECONDS )); [ $lim -gt $left ] && lim=$left
  [ $lim -lt 10 ] && { echo "######## $name: no time left"; return; }
  mkdir -p $O/$name; echo "######## $name at ${SECONDS} s, limit $lim s"
  OUT=$O/$name timeout -k 5 $lim "$@" 2>&1 | grep -v -iE "warning|warn\(|^\s*$" | cut -c1-240 > $O/$name/log.txt
  tail -n $tl $O/$name/log.txt
}
PARTS=" ${PARTS:-attn6 ssd6 conv6 tests model bench} "
on() { [[ "$PARTS" == *" $1 "* ]]; }
on attn6 && part attn6 $((${ATTN6_S:-100} + 12)) 30 bash .gpu/attn6.sh
on ssd6 && part ssd6 $((${SSD6_S:-100} + 12)) 30 bash .gpu/ssd6.sh
tests() {
  mapfile -t ids < .gpu/rerun${RERUN:-6}.txt
  python3 -m pytest "${ids[@]}" tests/test_attention.py::test_gpu_dkdv_options tests/test_attention.py::test_gpu_full_shapes tests/test_ssd.py::test_kernel_sweep_configs_bf16_gpu \
    tests/test_conv1d.py::test_bwd_reset_and_rows_gpu_bf16 tests/test_conv1d.py::test_fast_launch_gpu_matches_normal_launch -n ${TESTS_N:-6} -p no:cacheprovider -v -rfE --tb=short > $OUT/tests_v.txt 2>&1
  echo "$(grep -c ' PASSED' $OUT/tests_v.txt) passed, $(grep -c ' FAILED' $OUT/tests_v.txt) failed"
  grep -E "^(FAILED|ERROR) |^E  " $OUT/tests_v.txt | cut -c1-220 | head -20; tail -2 $OUT/tests_v.txt
}
export -f tests
on tests && part tests ${TESTS_S:-135} 14 bash -c tests
on conv6 && part conv6 $((${CONV6_S:-55} + 7)) 16 bash .gpu/conv6.sh
AV="${AV:-tma=fwd,dq;dq_delta=1;dkdv=32,128,4,3}"   # the OLD dk/dv default (DKDV_FAST is the default now)
model() {
  python3 bench/bench_model.py sweep 1x32768 1x32768 --rounds 3 2>/dev/null | python3 -u .gpu/model_print.py | sed 's/^/default   /'
  HYBRIDNA_ATTN_VARIANT="$AV" python3 bench/bench_model.py sweep 1x32768 1x32768 8x8192 --rounds 3 2>/dev/null | python3 -u .gpu/model_print.py | sed 's/^/attn-old  /'
  python3 bench/bench_model.py sweep 8x8192 --rounds 3 2>/dev/null | python3 -u .gpu/model_print.py | sed 's/^/default   /'
}
export -f model; export AV
on model && part model 80 12 bash -c model
left=$(( END - SECONDS - 5 ))
if on bench && [ $left -gt 40 ]; then
  mkdir -p $O/bench
  HYBRIDNA_BENCH_SKIP_DONE=bench/logs/s5-h200/rows.jsonl HYBRIDNA_BENCH_ORDER=attention,conv1d,generation,ssd WARM=0 \
    T=$left BUDGET=$(( left - 12 )) OUT=$O/bench bash .gpu/bench_all.sh 2>&1 | grep -v "WARNING: Target" | tail -45 | cut -c1-200
fi
echo "end at $SECONDS s"
