#!/bin/bash
# attn (issue 5), session 3 round 1, <= 118 s on one H100 (the lead's hard limit is 120 s):
# (1) tests/test_attention.py in full on the GPU: the GPU-only cases (-m gpu, -n 3) and the rest (-n 5) in two
#     concurrent pytest runs (8 workers), -v into files, 66 s; prints counts, FAILED lines and the tests that never
#     reported; meanwhile 3 niced processes compile the sweep's variants;
# (2) the variant sweep (bench/bench_attention.py sweep): launch configs and TMA loads per kernel at B8 H16 L8192 D64
#     (then B1 H16 L32768 D64 and B1 H8 L32768 D128 while time lasts), each checked against fp64 before timing;
#     then defaults / winners / SDPA FA2 / cuDNN timed interleaved 3 times (medians); the first shape's rows print as
#     they are measured. $OUT: tests.txt, sweep.md.
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/.gpu TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_attn_cache}
export PYTHONUNBUFFERED=1 HYBRIDNA_SWEEP_SHAPES=${HYBRIDNA_SWEEP_SHAPES:-"8,16,8192,64/1,16,32768,64/1,8,32768,128"} HYBRIDNA_SWEEP_TOP=9
OUT=${OUT:-/tmp/attn_out}; W=$(mktemp -d /tmp/attn_w.XXXX); mkdir -p $OUT
gpu() { nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader | head -1; }
echo "$(gpu) | commit $(git rev-parse --short HEAD 2>/dev/null)"
python3 -m pytest tests/test_attention.py --collect-only -q -p no:cacheprovider 2>/dev/null | grep "::" | sort > $W/all.txt &
for i in 0 1 2; do nice -n 15 timeout 70 python3 bench/bench_attention.py warm-sweep $i 3 > $W/warm$i.txt 2>&1 & done
timeout -s INT -k 4 66 python3 -m pytest tests/test_attention.py -m gpu -n 3 -v -rf -p no:cacheprovider > $W/tg.txt 2>&1 &
timeout -s INT -k 4 66 python3 -m pytest tests/test_attention.py -m "not gpu" -n 5 -v -rf -p no:cacheprovider -p attn_order > $W/tc.txt 2>&1 &
wait
cat $W/tg.txt $W/tc.txt > $OUT/tests.txt
grep -ohE "(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) tests/test_attention.py::[^ ]+" $W/tg.txt $W/tc.txt | sort -u -k2 > $W/rep.txt
echo "tests ($(el) s): $(awk '{print $1}' $W/rep.txt | sort | uniq -c | tr '\n' ' ') of $(wc -l < $W/all.txt) collected;" \
     "gpu: $(grep -E '^=+ .* in [0-9.]+s' $W/tg.txt | tail -1 | tr -d '=')"
grep -hE "^(FAILED|ERROR) " $W/tg.txt $W/tc.txt | cut -c1-230 | head -12
comm -23 $W/all.txt <(awk '{print $2}' $W/rep.txt | sort) > $W/never.txt
[ -s $W/never.txt ] && echo "never reported ($(wc -l < $W/never.txt)):" && python3 -c "
import sys, collections
g = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name = line.strip().split('::')[-1]
    fn, _, param = name.partition('[')
    g[fn[5:]].append(param.rstrip(']'))
print(' '.join(f'{fn}[{\",\".join(p)}]' if any(p) else fn for fn, p in g.items()))" $W/never.txt | fold -w 280 | head -10
grep -h "Error" $W/warm*.txt | cut -c1-200 | sort | uniq -c | head -4
echo "sweep from $(el) s: $(gpu)"
timeout -s INT -k 2 $(( 114 - $(el) )) python3 bench/bench_attention.py sweep $OUT 2> $W/sweep_err.txt
echo "sweep rc=$? at $(el) s: $(gpu)"; grep -v "^\s*$" $W/sweep_err.txt | tail -2 | cut -c1-200
rm -f $OUT/sweep.jsonl
