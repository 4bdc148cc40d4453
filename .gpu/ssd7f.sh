#!/bin/bash
# SSD forward variants, session 6 helper ssd7f (issue 4): <= 110 s wall. Run from the repo root, PYTHONPATH=/tmp/site:$PWD
# set. (1) compile: 6 background processes warm the variants at B1 T4096 (same specialisations as the timed shapes),
# sharing Triton's on-disk cache; 35 s cap. (2) .gpu/ssd7f.py: check, time, profile in what is left of SSD7F_S.
t0=$(date +%s)
export HYBRIDNA_POISON=0
budget=${SSD7F_S:-100}
for i in 0 1 2 3 4 5; do timeout 35 python3 .gpu/ssd7f.py --warm $i 6 > /tmp/ssd7f_warm_$i.txt 2>&1 & done
wait
grep -h "warm" /tmp/ssd7f_warm_*.txt | grep -v -i "warn" | cut -c1-200
rem=$(( budget - ($(date +%s) - t0) ))
echo "compile done after $(( $(date +%s) - t0 )) s; ${rem} s left"
SSD7F_S=$rem timeout $(( rem + 8 )) python3 .gpu/ssd7f.py 2>&1 | grep -v -iE "warn|USDT" | tee ${OUT:-/tmp}/ssd7f.txt
