#!/bin/bash
# Issue 10 (model training step). Round 1: fused norms (hybridna_kernels.norm, HYBRIDNA_FUSED_NORMS=1,
# the default) eager at B1xL32768 and B8xL8192, per-block torch.compile at B1xL32768, profile.
# Baseline (unfused, HYBRIDNA_FUSED_NORMS=0) from the 11:49 run: 64.1k tok/s, 56.1 GiB at 1x32768.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HYBRIDNA_BENCH_ROUNDS=2
OUT=${OUT:-/tmp/out-model}; mkdir -p $OUT
L=$OUT/steps.jsonl
S="python3 bench/bench_model.py step --model hybrid --log $L"
left() { echo $(( $1 < 150 - SECONDS - 3 ? $1 : 150 - SECONDS - 3 )); }
timeout $(left 30) python3 -m pytest tests/test_norm.py -n 8 -q -rf -p no:cacheprovider 2>&1 | tail -4
run() { local t=$1; shift; local env=$1; shift; local t0=$SECONDS
  env $env timeout $(left $t) $S "$@" > $OUT/last.txt 2>$OUT/err_$SECONDS.txt || echo "{\"failed\": \"$env $* rc=$?\"}" >> $L
  echo "ran $env $*: $((SECONDS - t0)) s"; }
run 35 HYBRIDNA_BENCH_COMPILE=0 --batch 1 --seqlen 32768
run 25 HYBRIDNA_BENCH_COMPILE=0 --batch 8 --seqlen 8192
run 45 HYBRIDNA_BENCH_COMPILE=block --batch 1 --seqlen 32768
echo "| fused norms | compile | shape | status | tokens/s | peak GiB | step ms | warm-up s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
python3 - $L <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "failed" in r:
        print(f"| failed: {r['failed']} | | | | | | | |"); continue
    print(f"| {r.get('fused_norms', '-')} | {r['compile']} | {r['batch']}x{r['seqlen']} | {r['status']} | "
          f"{r.get('tokens_per_s', '-')} | {r.get('peak_mem_gib', '-')} | {r.get('step_ms', '-')} | {r.get('warmup_s', '-')} |")
PY
timeout $(left 40) python3 bench/bench_model.py profile --model hybrid --batch 1 --seqlen 32768 --top 40 --out $OUT/prof > $OUT/prof.txt 2>&1
python3 -c "
import json,glob
for f in glob.glob('$OUT/prof/*.json'):
    d=json.load(open(f)); print('profile (eager, fused norms)', d['total_kernel_ms'], 'ms kernel time');
    [print(f'  {c:26s} {v[\"ms\"]:8.1f} ms') for c,v in d['categories'].items()]
    [print(f'  {k[\"ms\"]:7.2f} ms {k[\"calls\"]:4d}x {k[\"name\"][:90]}') for k in d['top_kernels'][:12]]
" 2>&1 | head -30
grep -h -i "error" $OUT/err_*.txt 2>/dev/null | tail -5
echo "total $SECONDS s"
