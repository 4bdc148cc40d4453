#!/bin/bash
# Sourced by the multi-part GPU call scripts (.gpu/next7.sh, next8.sh): installs the wheels the GPU machine lacks,
# sets the environment, and defines `part NAME LIMIT_S command...` (runs command under min(LIMIT_S, END - SECONDS)
# with OUT=$O/NAME, its log in $O/NAME/log.txt, the log's tail printed) and `on NAME` (NAME is in $PARTS). The caller
# sets PARTS (" a b c ", spaces around) after sourcing; END (default 540) bounds the whole call. Two exported part
# bodies (`part NAME LIMIT bash -c "FUNCTION ARGS"`): gpu_tests KEXPR (the attention and SSD GPU tests selected by
# -k KEXPR, -n 6, a summary) and model_vs_s6 [new] [old] (the 300m step with the defaults, and with session 6's SSD
# and attention defaults in a second process).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
O=$OUT; END=${END:-540}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1; git rev-parse --short HEAD 2>/dev/null
part() {  # part NAME LIMIT_S command...
  local name=$1 lim=$2; shift 2
  local left=$(( END - SECONDS )); [ $lim -gt $left ] && lim=$left
  [ $lim -lt 10 ] && { echo "######## $name: no time left"; return; }
  mkdir -p $O/$name; echo "######## $name at ${SECONDS} s, limit $lim s"
  OUT=$O/$name timeout -k 5 $lim "$@" 2>&1 | grep -v -iE "warning|warn\(" | cut -c1-230 > $O/$name/log.txt
  tail -n 40 $O/$name/log.txt
}
on() { [[ "$PARTS" == *" $1 "* ]]; }
gpu_tests() {  # gpu_tests KEXPR
  HYBRIDNA_FAIL_LOG=$OUT/fails.txt python3 -m pytest tests/test_attention.py tests/test_ssd.py -m gpu -k "$1" -n 6 \
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
model_vs_s6() {  # model_vs_s6 [new] [old] (default both)
  for c in ${@:-new old}; do
    if [ $c = new ]; then a=""; s=""; else a="tma=fwd,dq;dq_delta=1;dkdv_fast="; s="s6 default"; fi
    HYBRIDNA_ATTN_VARIANT="$a" HYBRIDNA_SSD_CONFIG="$s" python3 bench/bench_model.py sweep 8x8192 1x32768 mlp_re=0 \
      1x32768 --rounds 2 2>/dev/null | python3 -u .gpu/model_print.py | sed "s/^/$c   /"
  done
}
export -f gpu_tests model_vs_s6
