#!/bin/bash
# What .gpu/attn6.sh and attn7.sh share: `bash .gpu/attnrun.sh NAME N` (NAME attn6 / attn7) from the repo root:
# N processes compile every (head layout, variant) of .gpu/NAME.py at its check length into a shared Triton cache
# (<= 40 s), then .gpu/NAME.py checks and times what it lists until ${NAME^^}_S (default 100) s after this script's
# start (the warm-up's seconds passed as ${NAME^^}_WARM_S). Output: stdout and $OUT/NAME.txt.
set -u
name=$1
N=$2
U=${name^^}
OUT=${OUT:-/tmp/$name-out}
mkdir -p "$OUT"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_${name}_cache}
budget_var=${U}_S
S=${!budget_var:-100}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | head -1
echo "commit $(git rev-parse --short HEAD 2>/dev/null)"
for i in $(seq 0 $((N - 1))); do timeout 40 python3 ".gpu/$name.py" warm $i $N > "$OUT/warm$i.txt" 2>&1 & done
wait
echo "warm-up done at $(el) s; $(cat "$OUT"/warm*.txt | grep -c .) lines of warm-up output:"
cat "$OUT"/warm*.txt | grep -v Warning | cut -c1-200 | sort | uniq -c | head -6
rm -f "$OUT"/warm*.txt
env "${U}_WARM_S=$(el)" "${U}_S=$S" timeout -k 2 $(( S + 5 - $(el) )) python3 ".gpu/$name.py" 2>&1 | tee "$OUT/$name.txt"
echo "$name.py rc=${PIPESTATUS[0]} at $(el) s"
