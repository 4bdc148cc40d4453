#!/bin/bash
# lead slot of round 2 (<= 90 s): the generation benchmark under pytest (its decode check was fixed after call 1)
timeout 88 python3 -m pytest bench/bench_generation.py --benchmark-only -k "not 131072" -q -p no:cacheprovider -rf --benchmark-columns=median,rounds --benchmark-json $OUT/gen.json 2>&1 | tail -14
python3 -c "
import json; d=json.load(open('$OUT/gen.json'))
for b in d['benchmarks']:
    e=b['extra_info']; print(b['name'], {k: e.get(k) for k in ('ms','tokens_per_s','check_rel_err','forward_ms','prefill_over_forward')})
" 2>&1 | tail -8
