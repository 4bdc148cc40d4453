#!/bin/bash
# One GPU call for a round: every helper script (each <= 120 s, hard) and the lead's slot, sequentially.
# usage: OUT=... bash .gpu/round.sh lead_r1 ssd attn decode model
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
O=$OUT
{
for s in "$@"; do
  mkdir -p $O/$s; echo "######## $s $(date -u +%T)"
  lim=${LIM:-125}; [ "${s#lead}" != "$s" ] && lim=${LEADLIM:-95}
  OUT=$O/$s timeout $lim bash .gpu/$s.sh 2>&1 | grep -v -iE "warn|^\s*$" | cut -c1-300
done
echo "######## end $(date -u +%T)"
} 2>&1 | tee $O/all.txt | tail -c 3000
