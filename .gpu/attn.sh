#!/bin/bash
# attn (issue 5), session 3 final call, <= 57 s on one H100 (hard limit 60 s): the final defaults' headline rows.
# (0) 3 processes compile what follows, at small sizes (waited for: nothing else on the GPU while timing);
# (1) `final`: the defaults at B8 H16 L8192 D64 (the shape whose targets session 2 missed), then B1 H16 L32768 D64
#     and B1 H8 L32768 D128: checked against fp64 at a long-bucket length (o and every gradient), then ours, SDPA
#     FA2 and cuDNN timed interleaved (3 repeats, medians), then the forward under a CUDA graph (host-free);
# (2) `targets` in the same process: window 4096 at B1 H16 L131072 D64 (fwd, fwd+bwd, checked on a slice first;
#     the forward also against session 2's configs, interleaved) and decode of 1 query x Hq16 over Hkv4 x 131072
#     keys (eager and CUDA graph, against this run's copy bandwidth). Rows print as measured; nothing under $OUT.
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_attn_cache}
export PYTHONUNBUFFERED=1 HYBRIDNA_SWEEP_SHAPES=${HYBRIDNA_SWEEP_SHAPES:-"8,16,8192,64/1,16,32768,64/1,8,32768,128"}
export HYBRIDNA_WARM_TARGETS=1 HYBRIDNA_FINAL_S2=0
W=$(mktemp -d /tmp/attn_w.XXXX)
gpu() { nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | head -1; }
echo "$(gpu) | commit $(git rev-parse --short HEAD 2>/dev/null)"
for i in 0 1 2; do timeout 24 python3 bench/bench_attention.py warm-final $i 3 > $W/warm$i.txt 2>&1 & done
wait
grep -h "Error" $W/warm*.txt | cut -c1-200 | sort | uniq -c | head -4
echo "final from $(el) s: $(gpu)"
timeout -s INT -k 1 $(( 57 - $(el) )) python3 bench/bench_attention.py final+targets $W/final 2> $W/final_err.txt
echo "final rc=$? at $(el) s: $(gpu)"; grep -E "Error|error" $W/final_err.txt | tail -2 | cut -c1-200
