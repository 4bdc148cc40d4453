#!/bin/bash
# Issue 10 (model training step), round 1: eager vs torch.compile (per block / whole model) at
# B1 L32768 and B8 L8192, bf16 autocast, fused AdamW; then a per-category profile. <= 150 s.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HYBRIDNA_BENCH_ROUNDS=3
OUT=${OUT:-/tmp/out-model}; mkdir -p $OUT
L=$OUT/steps.jsonl
S="python3 bench/bench_model.py step --model hybrid --log $L"
run() { local t=$1; shift; local env=$1; shift; local t0=$SECONDS
  env $env timeout $t $S "$@" > $OUT/last.txt 2>$OUT/err_$SECONDS.txt || echo "{\"failed\": \"$env $* rc=$?\"}" >> $L
  echo "ran $env $*: $((SECONDS - t0)) s"; }
run 30 HYBRIDNA_BENCH_COMPILE=0 --batch 1 --seqlen 32768
run 20 HYBRIDNA_BENCH_COMPILE=0 --batch 8 --seqlen 8192
run 50 HYBRIDNA_BENCH_COMPILE=block --batch 1 --seqlen 32768
run 40 HYBRIDNA_BENCH_COMPILE=block --batch 8 --seqlen 8192
echo "| compile | shape | status | tokens/s | peak GiB | step ms | warm-up s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
python3 - $L <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "failed" in r:
        print(f"| failed: {r['failed']} | | | | | | |"); continue
    print(f"| {r['compile']} | {r['batch']}x{r['seqlen']} | {r['status']} | {r.get('tokens_per_s', '-')} | "
          f"{r.get('peak_mem_gib', '-')} | {r.get('step_ms', '-')} | {r.get('warmup_s', '-')} |")
PY
t0=$SECONDS
HYBRIDNA_BENCH_COMPILE=block timeout $((150 - SECONDS > 20 ? 150 - SECONDS - 5 : 15)) python3 bench/bench_model.py profile --model hybrid --batch 1 --seqlen 32768 --out $OUT/prof > $OUT/prof.txt 2>&1
python3 -c "
import json,glob
for f in glob.glob('$OUT/prof/*.json'):
    d=json.load(open(f)); print('profile', d['total_kernel_ms'], 'ms kernel time');
    [print(f'  {c:26s} {v[\"ms\"]:8.1f} ms') for c,v in d['categories'].items()]
" 2>&1 | head -14
grep -h -i "error" $OUT/err_*.txt 2>/dev/null | tail -5
