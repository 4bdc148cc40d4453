#!/bin/bash
# SSD backward variants, session 6 helper ssd7b (issue 4): <= 110 s wall. Run from the repo root, PYTHONPATH=/tmp/site:$PWD
# set. (1) compile: 12 background processes warm the variants at B1 T4096 (same specialisations as the timed shapes),
# sharing Triton's on-disk cache; 40 s cap. (2) .gpu/ssd7b.py: check, time (eager, graph), profile in what is left.
t0=$(date +%s)
export HYBRIDNA_POISON=0
budget=${SSD7B_S:-110}
for i in $(seq 0 11); do timeout 40 python3 .gpu/ssd7b.py --warm $i 12 > /tmp/ssd7b_warm_$i.txt 2>&1 & done
wait
grep -h "warm" /tmp/ssd7b_warm_*.txt | grep -v "Warn" | cut -c1-200
rem=$(( budget - ($(date +%s) - t0) ))
echo "compile done after $(( $(date +%s) - t0 )) s; ${rem} s left"
SSD7B_S=$rem timeout $(( rem + 8 )) python3 .gpu/ssd7b.py 2>&1 | grep -v -iE "warn|USDT" | tee ${OUT:-/tmp}/ssd7b.txt
