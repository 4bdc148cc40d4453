#!/bin/bash
# Sourced by the multi-part GPU call scripts (.gpu/next7.sh, next8.sh): installs the wheels the GPU machine lacks,
# sets the environment, and defines `part NAME LIMIT_S command...` (runs command under min(LIMIT_S, END - SECONDS)
# with OUT=$O/NAME, its log in $O/NAME/log.txt, the log's tail printed) and `on NAME` (NAME is in $PARTS). The caller
# sets PARTS (" a b c ", spaces around) after sourcing; END (default 540) bounds the whole call.
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
