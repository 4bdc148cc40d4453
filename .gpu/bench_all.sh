#!/bin/bash
# Issue 9: the WHOLE `pytest bench/ --benchmark-only` in one GPU call, about 480 s on an H100 from a cold Triton
# cache (estimate per file in bench/README.md). Carry .whl (and .peers for mamba_ssm's Triton SSD: without it those
# rows skip with the reason). Run from the repo root with $OUT set: bash .gpu/bench_all.sh
#  (1) warm: bench/warm.py's jobs in parallel processes compile the kernels (and FlexAttention) into the disk caches,
#      <= WARM_S s, nothing timed meanwhile (WARM=0 skips it);
#  (2) pytest under `timeout` (T s: what is left of TOTAL, 480 s, after the warm-up and 15 s for the report; SIGINT
#      first so pytest still writes its JSON); HYBRIDNA_BENCH_BUDGET_S (T - 30) shares the time among the files in
#      proportion to bench/conftest.py's FILE_EST_S (a file past its share skips its remaining tests: "time budget");
#      every test's row streams into $OUT/rows.jsonl as it finishes, so a cut run keeps what it measured;
#  (3) report.py: $OUT/report.md and at most 4 PNGs under $OUT/plots, a compact summary on stdout.
# Files back (8): rows.jsonl, bench.json (pytest-benchmark, written at the end), pytest.txt, report.md, plots/ (<= 4).
# Cuts (default; FULL=1 restores the code's defaults): equal-token sweep at 1k, 4k, 16k, 64k, 128k contexts
# (131,072 tokens per step; 2k, 8k, 32k dropped) and FlexAttention at the sliding-window shapes only.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1
export HYBRIDNA_BENCH_LOG=$OUT/rows.jsonl
if [ "${FULL:-0}" != 1 ]; then
  export HYBRIDNA_BENCH_CONTEXTS=${HYBRIDNA_BENCH_CONTEXTS:-1024,4096,16384,65536,131072}
  export HYBRIDNA_BENCH_FLEX=${HYBRIDNA_BENCH_FLEX:-window}
fi
echo "$(date -u +%T) $(nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | head -1) | $(git rev-parse --short HEAD 2>/dev/null) | peers: $(ls -d .peers/mamba_ssm 2>/dev/null || echo none)"
if [ "${WARM:-1}" = 1 ]; then
  W=$(mktemp -d /tmp/warm.XXXX)
  for j in model attention flex generation kernels; do
    timeout ${WARM_S:-70} python3 bench/warm.py $j > $W/$j.txt 2>&1 &
  done
  wait
  echo "warm done at ${SECONDS} s:"; grep -h -E "done in|FAILED" $W/*.txt | cut -c1-160
  for j in model attention flex generation kernels; do grep -q "done in" $W/$j.txt || echo "warm $j cut: $(tail -1 $W/$j.txt | cut -c1-120)"; done
fi
S0=$SECONDS
T=${T:-$(( ${TOTAL:-480} - 15 - SECONDS ))}
export HYBRIDNA_BENCH_BUDGET_S=${BUDGET:-$((T - 30))}
echo "pytest: timeout $T s, budget $HYBRIDNA_BENCH_BUDGET_S s"
timeout -s INT -k 20 $T python3 -m pytest bench/ --benchmark-only -p no:cacheprovider -q -rfE --durations=12 \
  --benchmark-json=$OUT/bench.json --benchmark-columns=median,rounds > $OUT/pytest.txt 2>&1
echo "pytest rc=$? after $((SECONDS - S0)) s (total ${SECONDS} s)"
timeout 60 python3 bench/report.py $OUT/rows.jsonl --plots $OUT/plots --max-plots 4 --out $OUT/report.md --summary
grep -E "^(FAILED|ERROR) |^=+ .*(passed|failed|error).* =+$" $OUT/pytest.txt | cut -c1-240 | tail -12
grep -A13 "slowest 12" $OUT/pytest.txt | cut -c1-150
echo "end at ${SECONDS} s; files: $(cd $OUT && find . -type f | sort | tr '\n' ' ')"
